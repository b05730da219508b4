"""The end-to-end benchmark on a short tiny-preset run: every field of report.SCHEMA is present
and well-typed in the JSON the CLI writes, the figures are consistent with each other, and the
--compare mode's match check passes on the real providers and fails on a perturbed output.
Timing values are only checked for consistency (sums, orderings), never for speed."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from liveavatar_rt.benchmark import report
from liveavatar_rt.benchmark.cli import main as bench_main
from liveavatar_rt.benchmark.compare import allowed_max_abs, match
from liveavatar_rt.benchmark.e2e import EXAMPLE, BenchConfig
from liveavatar_rt.benchmark.stats import percentile, summary

SHORT = ["--preset", "tiny", "--blocks", "3", "--warmup", "1", "--peak-n", "256"]


@pytest.fixture(scope="module")
def small_image(tmp_path_factory):
    """A 64x64 portrait: 64x64 video, 8x8 latent, so the VAE (the tiny preset's main cost) is
    4x cheaper than at the default 128x128 and the tests stay fast."""
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "face64.png"
    Image.open(EXAMPLE / "portrait.png").convert("RGB").resize((64, 64)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory, small_image):
    path = tmp_path_factory.mktemp("bench") / "out.json"
    assert bench_main(SHORT + ["--image", small_image, "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_json_holds_every_schema_field(bench_json):
    assert report.validate(bench_json) == []
    # single process, tiny: every stage is observable, so none may be null
    assert all(bench_json["stages"][k] is not None for k in report.STAGE_NAMES)
    assert bench_json["hardware"]["providers"]["linear"] in ("onednn_packed", "native", "ref")
    assert (bench_json["memory"]["gpu_peak_mib"] is None) == (not torch.cuda.is_available())
    assert bench_json["model"]["video_hw"] == [64, 64] and bench_json["model"]["latent_hw"] == [8, 8]


def test_figures_are_consistent(bench_json):
    r = bench_json
    assert r["model"]["frames"] == 9 + 12 * 2  # the first block drops 3 frames (published)
    assert r["fps"]["steady_blocks"] == 2 and all(s["n"] == 2 for s in r["stages"].values())
    st = r["stages"]
    denoise = st["audio_encoder"]["total"] + sum(st[f"step{i}"]["total"] for i in range(4))
    assert st["denoise"]["total"] == pytest.approx(denoise, rel=1e-9)
    assert st["block_e2e"]["total"] >= denoise + st["vae_decode"]["total"] + st["video_encode"]["total"]
    assert r["fps"]["steady_e2e"] == pytest.approx(24 / st["block_e2e"]["total"], rel=1e-9)
    assert r["fps"]["steady_denoise"] > r["fps"]["steady_e2e"]
    assert r["ttff"]["cold_s"] == pytest.approx(r["ttff"]["model_load_s"] + r["ttff"]["warm_s"])
    assert r["ttff"]["warm_s"] > r["ttff"]["session_setup_s"]
    fl = r["flops"]
    assert fl["dit_flop_per_s"] == pytest.approx(fl["dit_flops_steady"] / fl["dit_seconds_steady"])
    assert fl["fraction_of_peak"] == pytest.approx(fl["dit_flop_per_s"] / fl["matmul_peak"]["flops_per_s"])
    # the kernel updates the RSS high-water mark lazily: the current RSS may pass it by a little
    assert r["memory"]["peak_rss_mib"] >= 0.98 * r["memory"]["rss_end_mib"] > 0


def test_pipelined_schedule_reports_the_dit_per_block(tmp_path, small_image):
    """--schedule pipelined: no per-step times (a forward serves several blocks); each block's
    "dit" is the forwards charged to it, "rows" their mean batch height, and the DiT figures
    come from "dit"."""
    path = tmp_path / "pipelined.json"
    assert bench_main(SHORT + ["--image", small_image, "--schedule", "pipelined", "--no-encode",
                               "--json", str(path)]) == 0
    r = json.loads(path.read_text())
    assert report.validate(r) == [] and r["config"]["schedule"] == "pipelined"
    st = r["stages"]
    assert st["step0"] is None and st["dit"]["n"] == 2 and 1 <= st["rows"]["min"] <= st["rows"]["p95"] <= 4
    assert st["denoise"]["total"] == pytest.approx(st["audio_encoder"]["total"] + st["dit"]["total"], rel=1e-9)
    assert r["flops"]["dit_seconds_steady"] == pytest.approx(st["dit"]["total"], rel=1e-9)
    assert r["flops"]["fraction_of_peak"] > 0
    assert r["model"]["frames"] == 9 + 12 * 2  # the same blocks as the sequential schedule


def test_validate_names_missing_and_wrong_fields(bench_json):
    bad = json.loads(json.dumps(bench_json))
    del bad["fps"]["steady_e2e"]
    bad["stages"]["vae_decode"]["p95"] = "fast"
    bad["ttff"]["warm_s"] = None
    problems = report.validate(bad)
    assert "result.fps.steady_e2e: missing" in problems
    assert any(p.startswith("result.stages.vae_decode.p95: expected") for p in problems)
    assert any(p.startswith("result.ttff.warm_s: expected") for p in problems)
    assert len(problems) == 3


def test_compare_matches_reference_ops(tmp_path, small_image):
    path = tmp_path / "cmp.json"
    rc = bench_main(["--preset", "tiny", "--blocks", "2", "--warmup", "1", "--peak-n", "128", "--no-encode",
                     "--image", small_image, "--compare", "--json", str(path)])
    r = json.loads(path.read_text())
    assert report.validate(r) == [] and report.validate(r["compare"], report.COMPARE_SCHEMA) == []
    m = r["compare"]["match"]
    assert rc == 0 and m["ok"], m
    assert set(r["compare"]["reference"]["providers"].values()) == {"ref"}
    assert m["latent_max_abs"] <= m["allowed_max_abs"]
    assert r["stages"]["video_encode"] is None  # --no-encode: the stage is absent, not faked
    # per-op shares: the fast run spends time in the fused rolling-attention op, the reference never
    fast, ref = (r["compare"]["op_shares"][k]["ops"] for k in ("fast", "reference"))
    assert abs(sum(o["share"] for o in fast) - 1) < 1e-6 and fast[0]["ms_per_block"] >= fast[1]["ms_per_block"]
    names = lambda ops: {o["op"] for o in ops}  # noqa: E731
    # the fast run's own kernels show up among its largest ops (the reference's never do)
    ours = ("liveavatar_rt::", "mkldnn::_linear_pointwise")
    if r["hardware"]["extension"] == "loaded" or r["hardware"]["providers"]["linear"] == "onednn_packed":
        assert any(n.startswith(ours) for n in names(fast)), names(fast)
    assert not any(n.startswith(ours) for n in names(ref))


def test_medium_preset_is_random_and_the_14b_head_width():
    from liveavatar_rt import Pipeline

    pipe = Pipeline.from_pretrained("medium", quiet=True)
    cfg = pipe.model.cfg
    assert (cfg.dim, cfg.num_heads, cfg.head_dim, cfg.ffn_dim, cfg.num_layers) == (512, 4, 128, 1536, 8)
    assert "random weights" in pipe.note


def _raw(latents, video):
    return {"frames": [len(video)], "outputs": {"latents": latents, "video": video}}


def test_match_rule():
    g = torch.Generator().manual_seed(0)
    oracle = [torch.randn(1, 16, 3, 8, 8, generator=g) for _ in range(2)]
    ref = [x + 0.01 * torch.randn(x.shape, generator=g) for x in oracle]  # a low-precision run's error
    video = np.zeros((12, 64, 64, 3), np.uint8)
    close = [x + 0.015 * torch.randn(x.shape, generator=g).clamp(-1, 1) for x in oracle]
    far = [x + 0.5 for x in oracle]
    assert match(_raw(close, video), _raw(ref, video), _raw(oracle, video), torch.bfloat16)["ok"]
    bad = match(_raw(far, video), _raw(ref, video), _raw(oracle, video), torch.bfloat16)
    assert not bad["ok"] and bad["latent_max_abs"] == pytest.approx(0.5, rel=1e-6)
    nan = [x.clone() for x in close]
    nan[1][0, 0, 0, 0, 0] = float("nan")
    assert not match(_raw(nan, video), _raw(ref, video), _raw(oracle, video), torch.bfloat16)["ok"]
    o = torch.zeros(4)
    assert allowed_max_abs(o + 0.01, o, torch.bfloat16) == pytest.approx(0.02 + 1e-3)


def test_stats_and_config_errors():
    assert percentile([3, 1, 2], 50) == 2 and percentile([0, 10], 95) == pytest.approx(9.5)
    assert summary([1.0, 2.0])["total"] == 3.0
    with pytest.raises(ValueError, match="warmup"):
        BenchConfig(blocks=2, warmup=2)
    with pytest.raises(ValueError, match="dtype"):
        BenchConfig(dtype="fp16")
    with pytest.raises(ValueError, match="schedule must be one of"):
        BenchConfig(schedule="eager")
