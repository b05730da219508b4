"""Sections 1 and 2 of bench/gpu_check.py, as subprocesses: the CUDA extension build and the
`gpu`-marked tests. Torch-free on purpose: the parent imports it before torch, and a fresh
process is what proves the built extension loads.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

LOG_TAIL = 4000  # characters of a subprocess's output kept in the report
# A fresh process loads the built extension and says whether it has the CUDA kernels.
PROBE = (
    "import json, torch\n"
    "from torch.utils.cpp_extension import CUDA_HOME\n"
    "from liveavatar_rt import _ext\n"
    "from liveavatar_rt.ops import cuda_providers\n"
    "print(json.dumps({'ext_loaded': _ext.available(), 'ext_error': _ext.load_error(),\n"
    "                  'cuda_kernels': cuda_providers.has_cuda_kernels(), 'cuda_home': CUDA_HOME,\n"
    "                  'torch_cuda': torch.version.cuda}))\n"
)
_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed|warnings?)\b")


def _env(**extra: str) -> dict[str, str]:
    """The parent's environment without TRITON_INTERPRET (the GPU tests compile their kernels;
    the test files that need the interpreter set it themselves), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(extra)
    return env


def _run(cmd: list[str], cwd: Path, timeout: int, env: dict[str, str]) -> dict:
    """Run cmd; -> rc (None on timeout), seconds-free record with the output's tail."""
    try:
        r = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=timeout)
        out, rc = r.stdout, r.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        out, rc = out + f"\n[gpu_check] timed out after {timeout} s", None
    return {"cmd": cmd, "rc": rc, "log_tail": out[-LOG_TAIL:]}


def probe_extension(root: Path) -> dict:
    r = _run([sys.executable, "-c", PROBE], root, 120, _env())
    try:
        return json.loads(r["log_tail"].strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"ext_loaded": False, "probe_error": r["log_tail"][-1500:]}


def build(root: Path, dry_run: bool, timeout: int) -> dict:
    """Section 1. GPU: `setup.py build_ext --inplace` (compiles csrc/cuda/*.cu where torch has
    CUDA and CUDA_HOME is set), then a fresh process must load liveavatar_rt._C with its CUDA
    kernels. Dry run: `setup.py --name` runs setup.py's extension selection without compiling."""
    cmd = [sys.executable, "setup.py"] + (["--name"] if dry_run else ["build_ext", "--inplace"])
    res = _run(cmd, root, timeout, _env(MAX_JOBS=os.environ.get("MAX_JOBS", str(os.cpu_count() or 4))))
    res["probe"] = probe_extension(root)
    if dry_run:
        res["passed"] = res["rc"] == 0 and res["log_tail"].strip().endswith("liveavatar_rt")
        res["note"] = "dry run: nothing compiled; probe reports the extension already in the tree"
        return res
    probe = res["probe"]
    res["passed"] = res["rc"] == 0 and bool(probe.get("ext_loaded")) and bool(probe.get("cuda_kernels"))
    if not res["passed"]:
        res["error"] = ("build failed" if res["rc"] != 0 else
                        "liveavatar_rt._C does not load" if not probe.get("ext_loaded") else
                        f"built without CUDA kernels (CUDA_HOME={probe.get('cuda_home')}, torch CUDA "
                        f"{probe.get('torch_cuda')}): setup.py compiles csrc/cuda only when both are set")
    return res


def gpu_test_files(root: Path) -> list[str]:
    """Test files that carry the `gpu` marker (collecting only these keeps the run short and
    independent of the optional test dependencies of the other files)."""
    files = sorted((root / "tests").rglob("test_*.py"))
    return [str(f.relative_to(root)) for f in files if "mark.gpu" in f.read_text(errors="replace")]


def parse_counts(output: str) -> dict[str, int]:
    """pytest's summary line ('3 passed, 2 skipped, 40 deselected in 9.1s') -> counts."""
    for line in reversed(output.strip().splitlines()):
        found = _COUNT.findall(line)
        if found and " in " in line:
            counts: dict[str, int] = {}
            for n, what in found:
                key = {"error": "errors", "warning": "warnings"}.get(what, what)
                counts[key] = counts.get(key, 0) + int(n)
            return counts
    return {}


def gpu_tests(root: Path, dry_run: bool, timeout: int) -> dict:
    """Section 2: `pytest -m gpu -q` on the marked files. Passes with rc 0 and no failures or
    errors; on a GPU at least one test must have run (all skipped means no CUDA or no build)."""
    files = gpu_test_files(root)
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files]
    res = _run(cmd, root, timeout, _env())
    counts = parse_counts(res["log_tail"])
    res.update(files=files, counts=counts)
    ran = counts.get("passed", 0) + counts.get("failed", 0)
    res["passed"] = (res["rc"] == 0 and not counts.get("failed") and not counts.get("errors")
                     and (dry_run or ran > 0))
    if not res["passed"]:
        res["error"] = (f"pytest timed out after {timeout} s" if res["rc"] is None else
                        f"pytest rc {res['rc']}: {counts}" if res["rc"] != 0 or counts.get("failed") or counts.get("errors")
                        else f"no gpu test ran: {counts}")
    return res
