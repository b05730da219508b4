import sys
from pathlib import Path

# `tests.` imports (tolerances, golden harness) resolve from the repo root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
