"""`liveavatar-rt plan` (liveavatar_rt/plan/) against allocations measured on CPU.

The plan is computed on the meta device; here the same parts are measured on real CPU tensors,
independently of the planner's measuring code: the parameters of a randomly initialised model
(the tiny pipeline's path: init_random_, then to_fp8 for fp8), the RingCache / CondCache /
text K/V tensors of a real BlockStepper after its prefill, and the peak live bytes of one real
step and of one block's decode (the same LiveBytes tracker, the footprint op table on CPU).
Each planned figure must be within 10 % of the measurement.
"""
from __future__ import annotations

import functools

import pytest
import torch

from liveavatar_rt.cli import main
from liveavatar_rt.config import StreamConfig
from liveavatar_rt.engine.conditioning import WARM_LATENTS
from liveavatar_rt.engine.stepper import BlockStepper
from liveavatar_rt.model import CausalWanS2V
from liveavatar_rt.model.fp8 import to_fp8
from liveavatar_rt.model.init import init_random_
from liveavatar_rt.model.vae import VAEConfig, WanVAE
from liveavatar_rt.ops import OpTable
from liveavatar_rt.plan import LiveBytes, make_plan
from liveavatar_rt.plan.footprint import footprint_ops
from liveavatar_rt.plan.models import model_spec

GIB = 2**30
DT = torch.bfloat16


def close(planned: int, measured: int, rel: float = 0.10) -> bool:
    return abs(planned - measured) <= rel * measured


def _nbytes(ts) -> int:
    return sum(t.untyped_storage().nbytes() for t in {id(t): t for t in ts}.values())


def real_model(name: str, precision: str, ops: OpTable) -> CausalWanS2V:
    model = init_random_(CausalWanS2V(model_spec(name).dit, ops), seed=0, dtype=DT)
    return to_fp8(model) if precision == "fp8" else model


@torch.no_grad()
def measure(name: str, precision: str = "bf16", kv_dtype=None) -> dict[str, int]:
    """Bytes measured on CPU for layout '1' (all 4 steps, VAE and front on one rank)."""
    spec, stream = model_spec(name), StreamConfig()
    H, W = spec.size
    h, w = H // 8, W // 8
    model = real_model(name, precision, OpTable("cpu", DT))
    out = {"dit": _nbytes(model.parameters())}
    cfg = model.cfg
    stepper = BlockStepper(model, stream, (h, w), kv_dtype=kv_dtype)  # the runtime's own op table
    stepper.set_text(torch.randn(cfg.text_len, cfg.text_dim, dtype=DT))
    ref = torch.randn(1, 16, 1, h, w, dtype=DT)
    motion = torch.randn(1, 16, stream.motion_latent_frames, h, w, dtype=DT)
    stepper.prefill(ref, motion)
    rings = [t for r in stepper.rings.values() for t in r.tensors()]
    cond = stepper.cond.tensors()
    text = [t for kv in stepper.text_kv for t in kv]
    out.update(rings=_nbytes(rings), cond=_nbytes(cond), kv=_nbytes(rings + cond + text))

    # activations: a real model with the footprint table (fused kernels' tensors), real tensors
    fmodel = real_model(name, precision, footprint_ops("cpu", DT))
    fstep = BlockStepper(fmodel, stream, (h, w), steps=[0])
    fstep.set_text(torch.randn(cfg.text_len, cfg.text_dim, dtype=DT))
    # RoPE tables are memoised host-side (model/rope.py): warm them, as the planner does not
    # count host tensors (on a GPU they are not device memory)
    fstep._cond_rope(cfg.ref_time_index)
    with LiveBytes() as pre:
        fstep.prefill(ref, motion)
    x = torch.randn(1, 16, stream.frames_per_block, h, w, dtype=torch.float32 if precision == "fp8" else DT)
    audio = fstep.audio(torch.randn(1, cfg.audio_layers, cfg.audio_dim, 4 * stream.frames_per_block, dtype=DT))
    block = stream.cache_frames // stream.frames_per_block
    fstep.plan(0, block, stream.frames_per_block)
    with LiveBytes() as step:
        fstep.step(0, x, block, audio, torch.zeros_like(x))
    out.update(step=step.peak, act=max(step.peak, pre.peak - _nbytes([*fstep.cond.k, *fstep.cond.v])))

    out["vae"], out["dec"] = measure_vae(spec.vae, spec.size)
    return out


@functools.lru_cache(maxsize=None)  # tiny and medium share the VAE and the size: measure once
@torch.no_grad()
def measure_vae(cfg: VAEConfig, size: tuple[int, int]) -> tuple[int, int]:
    """(VAE weight bytes, decode state + one block's decode peak + conditioning encode peak)."""
    stream, (H, W) = StreamConfig(), size
    h, w = H // 8, W // 8
    vae = WanVAE(cfg, DT, "cpu", footprint_ops("cpu", DT)).init_random_(0)
    weights = _nbytes([*vae.parameters(), *vae.buffers()])
    with LiveBytes() as warm:
        dec = vae.new_stream()
        dec.decode(torch.randn(16, WARM_LATENTS, h, w))
    state = warm.live
    with LiveBytes() as blk:
        dec.decode(torch.randn(16, stream.frames_per_block, h, w))
    img = torch.rand(3, H, W) * 2 - 1
    with LiveBytes() as enc:
        vae.encode(img[:, None])
        vae.encode(img[:, None].expand(-1, stream.motion_frames, -1, -1))
    return weights, state + blk.peak + enc.peak


@pytest.mark.parametrize("name", ["tiny", "medium"])
def test_plan_matches_measured_layout_1(name):
    got = measure(name)
    plan = make_plan(name, "1", cuda_graphs=False)  # CPU runs eagerly: one step's activations
    (r,) = plan["ranks"]
    assert r["role"] == "steps 0,1,2,3 + VAE + front" and r["encoders"] == 0
    for key, measured in (("dit", got["dit"]), ("vae", got["vae"]), ("kv", got["kv"]), ("act", got["act"]),
                          ("decoder", got["dec"])):
        assert close(r[key], measured), f"{name} {key}: planned {r[key]} vs measured {measured}"
    fig = plan["figures"]["dit"]
    assert close(fig["step_peak"], got["step"]), (fig["step_peak"], got["step"])
    assert close(4 * fig["ring"], got["rings"]) and close(fig["cond"], got["cond"])


def test_ring_layout_splits_caches_by_steps():
    one = make_plan("tiny", "1", cuda_graphs=False)["ranks"][0]
    ring = make_plan("tiny", "2+1", cuda_graphs=False)
    fig = ring["figures"]["dit"]
    r0, r1, r2 = ring["ranks"]
    assert [r["role"] for r in ring["ranks"]] == ["steps 0,1 + front", "steps 2,3", "VAE"]
    assert r0["dit"] == r1["dit"] == one["dit"] and r2["dit"] == 0  # every DiT rank holds the whole DiT
    shared = fig["cond"] + fig["text_kv"]
    assert r0["kv"] == r1["kv"] == 2 * fig["ring"] + shared and r2["kv"] == 0
    assert r0["kv"] + r1["kv"] - 2 * shared == one["kv"] - shared  # the rings split, nothing lost
    assert r0["act"] == r1["act"] == one["act"] and r2["act"] == 0
    assert r0["decoder"] + r2["decoder"] == one["decoder"]  # encode on the front, decode on the VAE rank
    # measured: a real stepper owning steps [0, 1] holds 2 rings
    spec = model_spec("tiny")
    model = real_model("tiny", "bf16", OpTable("cpu", DT))
    st = BlockStepper(model, StreamConfig(), (spec.size[0] // 8, spec.size[1] // 8), steps=[0, 1])
    assert close(2 * fig["ring"], _nbytes([t for r in st.rings.values() for t in (r.k, r.v)]))
    # graphs on: one memory pool per owned step
    g = make_plan("tiny", "2+1")["ranks"][0]
    assert g["act"] >= 2 * fig["step_peak"]


def test_fp8_weights_about_half_of_bf16():
    bf16 = make_plan("s2v-14b", "4+1", "bf16")["ranks"][1]["dit"]
    fp8 = make_plan("s2v-14b", "4+1", "fp8")["ranks"][1]["dit"]
    assert 0.45 < fp8 / bf16 < 0.55, (fp8 / GIB, bf16 / GIB)
    # the planned fp8 bytes are the real Fp8Linear parameters' bytes (E4M3 weights, fp32 scales)
    got = measure("tiny", "fp8")
    plan = make_plan("tiny", "1", "fp8", cuda_graphs=False)["ranks"][0]
    assert close(plan["dit"], got["dit"], 0.01) and close(plan["act"], got["act"])
    assert make_plan("tiny", "1", "fp8")["ranks"][0]["dit"] < make_plan("tiny", "1")["ranks"][0]["dit"]


def test_fp8_kv_cache_is_smaller_and_planned_as_allocated():
    bf = make_plan("s2v-14b", "4+1", "fp8", "bf16")["ranks"][1]["kv"]
    f8 = make_plan("s2v-14b", "4+1", "fp8", "fp8")
    assert 0.5 < f8["ranks"][1]["kv"] / bf < 0.56  # 1 B + 4 B / head_dim 128
    # the planned caches are what a real kv_cache_dtype="fp8" stepper holds on CPU
    from liveavatar_rt.ops.kv_fp8 import E4M3

    got = measure("tiny", kv_dtype=E4M3)
    plan = make_plan("tiny", "1", kv_cache="fp8", cuda_graphs=False)["ranks"][0]
    assert close(plan["kv"], got["kv"], 0.01), (plan["kv"], got["kv"])
    assert got["rings"] < 0.7 * measure("tiny")["rings"]


def test_cli_prints_14b_table(capsys, tmp_path):
    out = tmp_path / "plan.json"
    rc = main(["plan", "--model", "s2v-14b", "--layout", "4+1", "--precision", "fp8", "--kv-cache", "fp8",
               "--size", "384x704", "--gpu-mem", "32", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "fits 32 GiB" in text and "kv fp8" in text
    rows = [ln.split() for ln in text.splitlines() if ln.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["0", "1", "2", "3", "4"]
    assert all(r[-1] in ("yes", "NO") for r in rows)
    assert "VAE" in rows[4] and "front" in rows[0]
    assert out.is_file()


@pytest.mark.parametrize("argv, msg", [(["--model", "nope"], "unknown model"),
                                       (["--model", "tiny", "--size", "100x128"], "multiples of 64"),
                                       (["--model", "tiny", "--size", "big"], "HEIGHTxWIDTH"),
                                       (["--model", "tiny", "--layout", "3"], "do not divide"),
                                       (["--model", "tiny", "--layout", "2+2"], "layout")])
def test_cli_bad_input(capsys, argv, msg):
    assert main(["plan", *argv]) == 2
    assert msg in capsys.readouterr().err
