"""One GPU acceptance command: build, GPU tests, kernels vs references, CUDA graphs, fp8, and a
timed 14B-shaped DiT step, in one run, into one JSON report.

    python bench/gpu_check.py [--json bench/results/gpu_check.json] [--layers 4]   # one CUDA GPU, < 8 min on an H100
    .venv/bin/python bench/gpu_check.py --dry-run [--json PATH]                    # CPU, tiny shapes, seconds

Uses the torch / triton already installed on the machine (it never installs anything). Sections,
in order (each wrapped: a failure is recorded and the next one still runs):

  build       `python setup.py build_ext --inplace` (the Makefile's build), then whether
              liveavatar_rt._C loads with its CUDA kernels. Dry run: `setup.py --name` only
              (imports setup.py's extension logic, compiles nothing).
  gpu_tests   `pytest -m gpu -q` on the test files that carry the marker (on CPU they skip).
  ops         every Triton kernel / CUDA provider in liveavatar_rt.ops.OPS vs its reference at
              the 14B per-layer shapes, fp32 and bf16 (bench/gpu_check_ops.py).
  fp8         fp8_linear's `scaled_mm` provider vs its reference at the 14B GEMM shapes (bench/gpu_check_fp8.py).
  cuda_graphs CUDA-graph replay == eager over several blocks (bench/gpu_check_model.py).
  dit_timing  one DiT step on N layers (bf16 / fp8, eager / graphs) -> 40 layers -> TPP layouts.

The build runs first and before anything loads liveavatar_rt._C, and pytest runs before this
process touches the GPU. The report is rewritten after every section, so a run killed midway
still leaves what it had. Exit code: 0 when every section passed, 1 otherwise, 2 without CUDA
(and no --dry-run).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `bench.` and `liveavatar_rt` from the checkout
    sys.path.insert(0, str(ROOT))

from bench import gpu_check_build as build_sections  # noqa: E402  (torch-free: imported before torch)

SCHEMA = "liveavatar_rt.gpu_check/1"
SECTIONS = ("build", "gpu_tests", "ops", "fp8", "cuda_graphs", "dit_timing")
DEFAULT_JSON = ROOT / "bench" / "results" / "gpu_check.json"
DEFAULT_DRY_JSON = ROOT / "bench" / "results" / "gpu_check_dry.json"
BUDGET_S = 480  # the acceptance budget: 8 minutes on one H100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, default=None,
                   help=f"report path (default {DEFAULT_JSON.relative_to(ROOT)}; "
                        f"dry run: {DEFAULT_DRY_JSON.relative_to(ROOT)})")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: the same plumbing in seconds")
    p.add_argument("--device", default="cuda:0", help="CUDA device (ignored by --dry-run)")
    p.add_argument("--layers", type=int, default=None, help="DiT layers timed (default 4; dry run 2)")
    p.add_argument("--graph-layers", type=int, default=2, help="DiT layers of the CUDA-graph check model")
    p.add_argument("--graph-blocks", type=int, default=10, help="blocks compared eager vs graphs (>= 6)")
    p.add_argument("--timing-blocks", type=int, default=3, help="blocks timed once the ring is full")
    p.add_argument("--vae-seconds", type=float, default=None, help="assume this VAE block time instead of measuring")
    p.add_argument("--hop-us", type=float, default=50.0, help="assumed ring hop (NCCL p2p) time, microseconds")
    p.add_argument("--build-timeout", type=int, default=300)
    p.add_argument("--pytest-timeout", type=int, default=300)
    p.add_argument("--skip", action="append", default=[], choices=SECTIONS, help="skip a section (recorded; repeatable)")
    args = p.parse_args(argv)
    if args.json is None:
        args.json = DEFAULT_DRY_JSON if args.dry_run else DEFAULT_JSON
    if args.layers is None:
        args.layers = 2 if args.dry_run else 4
    if args.layers < 1 or args.graph_layers < 1 or args.timing_blocks < 1:
        p.error("--layers, --graph-layers and --timing-blocks must be >= 1")
    return args


def set_triton_mode(dry_run: bool) -> str | None:
    """The Triton interpreter is read when triton is first imported, so it is set here, before
    any import of torch or the package: on (CPU kernels) for the dry run, off on the GPU (an
    inherited TRITON_INTERPRET=1 would run the kernels on the host, hundreds of times slower).
    -> what was done, for the report."""
    before = os.environ.get("TRITON_INTERPRET")
    if dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
        return None if before == "1" else "set TRITON_INTERPRET=1 (dry run: Triton kernels interpreted on CPU)"
    if before is not None:
        del os.environ["TRITON_INTERPRET"]
        return f"removed TRITON_INTERPRET={before!r} (GPU run: kernels must be compiled)"
    return None


class Report:
    """The JSON report, rewritten after every section (a killed run still leaves a report)."""

    def __init__(self, path: Path, args: argparse.Namespace):
        self.path, self.t0 = path, time.perf_counter()
        self.data = {"schema": SCHEMA, "dry_run": args.dry_run, "complete": False, "passed": None,
                     "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "command": [sys.executable, *sys.argv], "budget_s": BUDGET_S,
                     "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "machine": {}, "sections": {}}

    def write(self) -> None:
        self.data["wall_s"] = time.perf_counter() - self.t0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_json_default) + "\n")
        tmp.replace(self.path)

    def finish(self) -> bool:
        secs = self.data["sections"]
        failed = [k for k, s in secs.items() if s["status"] == "fail"]
        wall = time.perf_counter() - self.t0
        self.data.update(failed_sections=failed, skipped_sections=[k for k, s in secs.items() if s["status"] == "skip"],
                         passed=not failed and bool(secs), complete=True, within_budget=wall <= BUDGET_S)
        self.write()
        return self.data["passed"]


def _json_default(o):
    return str(o)  # dtypes, devices, paths: their readable names


def run_section(report: Report, name: str, fn, skip: bool = False) -> None:
    """Run one section, record status / seconds / result or the error, write the report."""
    entry = {"status": "skip", "seconds": 0.0, "error": None, "result": None}
    if not skip:
        t0 = time.perf_counter()
        try:
            result = fn()
            entry.update(status="pass" if result.get("passed") else "fail", result=result)
            if not result.get("passed"):
                entry["error"] = result.get("error") or f"{name}: a check failed (see sections.{name}.result)"
        except Exception as e:  # noqa: BLE001  (the point: one section's failure must not stop the rest)
            entry.update(status="fail", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-6000:])
        entry["seconds"] = time.perf_counter() - t0
        entry.update(_after_section())
    report.data["sections"][name] = entry
    report.write()
    print(f"[gpu_check] {name:12s} {entry['status']:5s} {entry['seconds']:7.1f} s"
          + (f"  {entry['error']}" if entry["error"] else ""), flush=True)


def _after_section() -> dict:
    """Free cached GPU memory between sections and report the section's peak. Looks torch up
    instead of importing it: before the in-process sections nothing here has touched CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return {}
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return {"peak_mem_gib": peak}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    triton_note = set_triton_mode(args.dry_run)
    report = Report(args.json, args)
    report.data["triton_interpret"] = triton_note
    # build and pytest first: both run before this process imports the package's ops or touches CUDA
    run_section(report, "build", lambda: build_sections.build(ROOT, args.dry_run, args.build_timeout), "build" in args.skip)
    run_section(report, "gpu_tests", lambda: build_sections.gpu_tests(ROOT, args.dry_run, args.pytest_timeout),
                "gpu_tests" in args.skip)

    from bench import gpu_check_run  # imports torch and liveavatar_rt (after the build)

    report.data["machine"] = gpu_check_run.machine_facts(args)
    report.write()
    device = gpu_check_run.check_device(args)
    if device is None:
        report.data["error"] = "no CUDA device (torch.cuda.is_available() is False); use --dry-run on CPU"
        report.finish()
        print(f"[gpu_check] {report.data['error']}", file=sys.stderr)
        return 2
    for name in SECTIONS[2:]:
        run_section(report, name, gpu_check_run.section(name, args, device), name in args.skip)
    ok = report.finish()
    print(f"[gpu_check] {'PASS' if ok else 'FAIL'} in {report.data['wall_s']:.0f} s -> {args.json}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
