"""bench/gpu_check.py, the one GPU acceptance command, through its CPU dry run: the script runs
as a subprocess (it sets TRITON_INTERPRET before triton is imported, which an in-process call
could not), every section must run and pass, the JSON has the structure the GPU run writes, a
section that raises is recorded while the others still run (exit code 1), and the script never
installs or pins torch. Timings are checked for consistency only, never for speed."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_check, gpu_check_model

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"
SECTIONS = ("build", "gpu_tests", "ops", "fp8", "cuda_graphs", "dit_timing")
TRITON = importlib.util.find_spec("triton") is not None


def run_script(*args: str, timeout: int = 240) -> tuple[subprocess.CompletedProcess, dict]:
    r = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout)
    path = Path(args[args.index("--json") + 1])
    return r, json.loads(path.read_text())


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    r, report = run_script("--json", str(tmp_path_factory.mktemp("gpu_check") / "report.json"))
    assert r.returncode == 0, f"dry run failed (rc {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return report


def test_report_structure(dry):
    assert dry["schema"] == gpu_check.SCHEMA and dry["dry_run"] is True
    assert dry["complete"] is True and dry["passed"] is True and dry["failed_sections"] == []
    assert isinstance(dry["wall_s"], float) and dry["budget_s"] == gpu_check.BUDGET_S
    for key in ("python", "torch", "torch_cuda", "triton", "cuda_available", "float32_matmul_precision"):
        assert key in dry["machine"], key
    assert list(dry["sections"]) == list(SECTIONS)


@pytest.mark.parametrize("name", SECTIONS)
def test_every_section_ran_and_passed(dry, name):
    sec = dry["sections"][name]
    assert sec["status"] == "pass", f"{name}: {sec['error']}\n{sec.get('traceback', '')}"
    assert sec["error"] is None and sec["seconds"] > 0
    assert isinstance(sec["result"], dict) and sec["result"]["passed"] is True


def test_build_and_pytest_subprocesses(dry):
    build, tests = dry["sections"]["build"]["result"], dry["sections"]["gpu_tests"]["result"]
    assert build["rc"] == 0 and build["cmd"][-1] == "--name"  # the dry run compiles nothing
    assert tests["rc"] == 0 and tests["cmd"][3:6] == ["-m", "gpu", "-q"]
    assert "tests/ops/test_cuda_modulate.py" in tests["files"] and "tests/engine/test_graphs.py" in tests["files"]
    assert tests["counts"].get("skipped", 0) > 0 and not tests["counts"].get("failed")  # no CUDA here: skipped


def test_ops_section_covers_every_gpu_provider(dry):
    from liveavatar_rt.ops import OPS
    from bench.gpu_check_ops import is_gpu_provider

    res = dry["sections"]["ops"]["result"]
    gpu = {f"{name}:{p.name}" for name, op in OPS.items() for p in op.providers if is_gpu_provider(p)}
    assert {"modulate:cuda", "rolling_attention:triton", "qk_norm_rope:triton"} <= gpu
    assert gpu <= set(res["by_provider"]), "a Triton/CUDA provider has no entry"
    assert res["by_provider"]["modulate:cuda"]["status"] == "skip"  # refused off CUDA, never faked
    ran = [e for e in res["entries"] if "outputs" in e]
    assert ran and all(e["status"] == "pass" and e["max_abs"] <= max(o["tol"] for o in e["outputs"]) for e in ran)
    if TRITON:  # the Triton kernels ran under the interpreter, both dtypes
        tri = [e for e in ran if e["provider"] == "triton"]
        assert tri and all(e["interpreted"] for e in tri)
        assert {e["dtype"] for e in tri} == {"float32", "bfloat16"}


def test_fp8_section(dry):
    res = dry["sections"]["fp8"]["result"]
    assert len(res["shapes"]) >= 2
    assert all(s["pass"] and s["rel_l2"] < 2e-3 for s in res["shapes"])


def test_graph_section_replays_equal_eager(dry):
    res = dry["sections"]["cuda_graphs"]["result"]
    assert len(res["blocks"]) == 10 and all(b["equal"] for b in res["blocks"])
    assert {b["path"] for b in res["blocks"]} == {"graph", "eager (ring filling)"}
    c = res["counts"]
    assert c["builds"] == c["expected_builds"] == 4 and c["static_runs"] == c["expected_static_runs"]
    assert all(v == 1 for v in res["rebased_per_step"].values())  # the rebase happened on the static path


def test_timing_section_extrapolates_consistently(dry):
    res = dry["sections"]["dit_timing"]["result"]
    assert set(res["modes"]) == {"bf16-eager", "bf16-graphs", "fp8-eager", "fp8-graphs"}
    assert res["vae"]["source"] == "measured" and res["vae"]["seconds"] > 0
    assert res["modes"]["fp8-eager"]["providers"]["fp8_linear"] == "ref"  # CPU: the reference fp8 GEMM
    for name, m in res["modes"].items():
        assert m["t_step_full_s"] == pytest.approx(m["step_s"] * m["layers_full"] / m["layers_measured"]), name
        assert set(m["layouts"]) == set(gpu_check_model.LAYOUTS)
        for lay in m["layouts"].values():
            assert lay["interval_s"] == max(lay["stage_s"].values())
            assert lay["fps"] == pytest.approx(12 / lay["interval_s"])


def test_layout_model_matches_tpp_model_md():
    """bench/TPP_MODEL.md's table at t_step 0.20 s, t_vae 0.15 s (no audio, no hop): 4+1 -> 60
    FPS, 2+1 -> 30, 4 (VAE on rank 3) -> interval 0.35 s, 1 process -> 4 steps + VAE."""
    fps = {name: gpu_check_model.layout_model(r, v, 0.2, 0.0, 0.15, 0.0, 0.1)
           for name, (r, v) in gpu_check_model.LAYOUTS.items()}
    assert fps["4+1"]["fps"] == pytest.approx(60) and fps["4+1"]["gpus"] == 5
    assert fps["2+1"]["fps"] == pytest.approx(30) and fps["2+1"]["gpus"] == 3
    assert fps["4"]["interval_s"] == pytest.approx(0.35) and fps["4"]["gpus"] == 4
    assert fps["1"]["interval_s"] == pytest.approx(0.95) and fps["1"]["gpus"] == 1
    assert fps["4+1"]["ttff_s"] == pytest.approx(0.1 + 0.8 + 0.15)


def test_a_raising_section_is_recorded_and_the_rest_still_run(tmp_path):
    """Plumbing: the whole script with one section made to raise (too few graph blocks) and the
    others skipped: that section fails with its traceback, the report is complete, exit code 1."""
    path = tmp_path / "fail.json"
    skips = [a for s in ("build", "gpu_tests", "ops", "fp8") for a in ("--skip", s)]
    r, report = run_script("--json", str(path), "--graph-blocks", "3", *skips)
    assert r.returncode == 1, r.stdout + r.stderr
    sec = report["sections"]
    assert sec["cuda_graphs"]["status"] == "fail" and "graph-blocks 3" in sec["cuda_graphs"]["error"]
    assert "Traceback" in sec["cuda_graphs"]["traceback"]
    assert sec["dit_timing"]["status"] == "pass"  # ran after the failure
    assert all(sec[s]["status"] == "skip" for s in ("build", "gpu_tests", "ops", "fp8"))
    assert report["passed"] is False and report["failed_sections"] == ["cuda_graphs"] and report["complete"]


def test_run_section_records_an_exception(tmp_path):
    import argparse

    rep = gpu_check.Report(tmp_path / "r.json", argparse.Namespace(dry_run=True))

    def boom():
        raise RuntimeError("kernel exploded")

    gpu_check.run_section(rep, "first", boom)
    gpu_check.run_section(rep, "second", lambda: {"passed": True})
    gpu_check.run_section(rep, "third", lambda: {"passed": False})
    assert rep.finish() is False
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["sections"]["first"]["error"] == "RuntimeError: kernel exploded"
    assert data["sections"]["second"]["status"] == "pass"
    assert data["sections"]["third"]["status"] == "fail" and "a check failed" in data["sections"]["third"]["error"]
    assert data["failed_sections"] == ["first", "third"]


def test_never_installs_or_pins_torch():
    """The GPU machine's own torch / triton are used as they are: no pip, no pins."""
    files = sorted((ROOT / "bench").glob("gpu_check*.py"))
    assert SCRIPT in files and len(files) >= 2
    for f in files:
        text = f.read_text()
        for bad in ("pip install", "torch==", "triton==", "ensurepip", '"pip"', "'pip'", "-m pip"):
            assert bad not in text, f"{f.name} contains {bad!r}"
