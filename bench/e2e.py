"""End-to-end streaming benchmark (the same as `liveavatar-rt bench`):

    .venv/bin/python -m bench.e2e --preset tiny --json out/bench.json [--compare] [--layout 2+1]

The code lives in liveavatar_rt/benchmark/ (cli.py has the arguments)."""
from __future__ import annotations

import sys

from liveavatar_rt.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
