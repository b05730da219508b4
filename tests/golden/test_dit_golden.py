"""Golden parity of the generator + timestep-forcing caches against the published run.

The fixture set is read from LIVEAVATAR_GOLDEN_DIR (default ../shared/golden/liveavatar_tiny);
see tests/golden/harness.py for the tolerances and why.
"""
from __future__ import annotations

import pytest
import torch

from liveavatar_rt.config import ModelConfig
from liveavatar_rt.engine import flow_schedule
from liveavatar_rt.io import merge_lora_weight, parse_lora, read_safetensors
from liveavatar_rt.ops import block_norms
from liveavatar_rt.ops.norm import layer_norm
from tests.golden import harness

pytestmark = pytest.mark.skipif(not (harness.GOLDEN_DIR / "config.json").is_file(),
                                reason=f"golden fixtures not found at {harness.GOLDEN_DIR}")


def test_schedule_matches_fixture():
    p = harness.settings()["pipeline"]
    sigmas, timesteps = flow_schedule(p["sampling_steps"])
    assert sigmas.tolist() == pytest.approx(p["sigmas"], abs=0, rel=0)
    assert timesteps.tolist() == pytest.approx(p["timesteps"], abs=0, rel=0)


def test_lora_merge_is_bitwise():
    g = harness.GOLDEN_DIR
    conf = harness.settings()
    check = read_safetensors(g / "lora_merged_check.safetensors")
    loras = parse_lora(read_safetensors(g / conf["lora"]["file"]))
    names = {k.rsplit(".", 1)[0] for k in check}
    assert names, "lora_merged_check holds no tensors"
    for name in names:
        a, b = loras[name]
        merged = merge_lora_weight(check[f"{name}.before"], a, b, conf["lora"]["scaling"], name)
        assert torch.equal(merged, check[f"{name}.after"]), name


@pytest.mark.parametrize("variant", ["fp32", "bf16"])
def test_parity_reference_ops(variant):
    res = harness.run(variant, force="ref")
    assert harness.parity_failures(res, variant) == []


def test_parity_bf16_best_providers():
    """The default (fastest available) providers stay within the bf16 parity bound too."""
    res = harness.run("bf16")
    assert harness.parity_failures(res, "bf16") == []


def test_parity_bf16_pipelined_schedule():
    """The pipelined schedule (every block in flight takes its next step in one batched forward)
    stays within the bf16 parity bound: its rows differ from the sequential run only by the
    GEMMs' accumulation order for a taller batch (tests/engine/test_pipelined.py)."""
    res = harness.run("bf16", pipelined=True)
    assert harness.parity_failures(res, "bf16") == []


needs_fp8 = pytest.mark.skipif(not (harness.GOLDEN_DIR / "outputs_fp8.safetensors").is_file(),
                               reason="this fixture set has no outputs_fp8.safetensors")


@needs_fp8
def test_parity_fp8_published_linears():
    """precision='fp8' (the published --fp8 rule) against the published fp8 run; bound: harness.FP8_BOUND."""
    res = harness.run("fp8")
    assert harness.parity_failures(res, "fp8") == []


@needs_fp8
def test_fp8_bound_rejects_a_bf16_run():
    """The same weights in bf16 fail the fp8 parity: the test tells fp8 from bf16."""
    res = harness.run("fp8", precision="bf16", blocks=2)
    failures = harness.parity_failures(res, "fp8")
    assert any(f.startswith("velocity") for f in failures), failures
    assert any(f.startswith("cond_k_layer0") for f in failures), failures


# What an E4M3 KV cache changes: the stored rows (its own resolution, ~2.5 % rel L2 measured on
# every cache tensor of the fixture); the outputs stay within the variant's parity bound
# (measured vs outputs_bf16: velocity 0.58 % / latent 0.38 % with the fp8 cache, 0.56 / 0.37 %
# without; fp8 linears + fp8 cache vs outputs_fp8: 1.87 % / 0.90 %, 1.8 / 0.9 % without).
CACHE_TENSORS = ("cond_k_layer0", "cond_v_layer0", "cache_k_layer0_step0_after_block5",
                 "cache_v_layer0_step0_after_block5")
E4M3_ROWS = 4e-2  # rel L2 of E4M3 rows with per-row scales: 3 mantissa bits, ~2.5 % rms


@pytest.mark.parametrize("variant", ["bf16", pytest.param("fp8", marks=needs_fp8)])
def test_fp8_kv_cache_keeps_the_variants_parity(variant):
    from liveavatar_rt.ops.kv_fp8 import E4M3
    from tests.tolerances import rel_err

    res = harness.run(variant, kv_dtype=E4M3)
    failures = harness.parity_failures(res, variant)
    assert [f for f in failures if not f.startswith(CACHE_TENSORS)] == []
    assert any(f.startswith("cond_k_layer0") for f in failures), "the cache rows are not quantized"
    exp = harness.expected(variant)
    for got, name in ((res.cond_k0, "cond_k_layer0"), (res.cond_v0, "cond_v_layer0"),
                      (res.ring_k0, CACHE_TENSORS[2]), (res.ring_v0, CACHE_TENSORS[3])):
        if name in exp:  # the fp8 outputs hold no ring snapshot
            assert rel_err(got, exp[name])[1] < E4M3_ROWS, name


def _even_split(self):
    """A plausible but wrong split: 2 more real dims to height and width each."""
    hw = 2 * (self.head_dim // 6) + 2
    return self.head_dim - 2 * hw, hw, hw


def _unrounded_ln_modulate_with(modulate_fn, x, shift, scale, eps, out_dtype):
    B, L, C = x.shape
    n = layer_norm(x, None, None, eps)  # fp32: not rounded to x's dtype before the modulation
    return modulate_fn(n.reshape(B, shift.shape[1], -1, C), shift, scale, out_dtype).reshape(x.shape)


MUTATIONS = {
    # a different RoPE frequency split (time/height/width real dims)
    "rope_split": dict(variant="fp32", patch=(ModelConfig, "rope_split", property(_even_split))),
    # norm1's output not rounded to bf16 before the fp32 modulation
    "norm1_rounding": dict(variant="bf16", patch=(block_norms, "ln_modulate_with", _unrounded_ln_modulate_with)),
    # LoRA scale alpha/rank changed from 0.5 to 1.0
    "lora_scale": dict(variant="fp32", run=dict(lora_scale=1.0)),
    # text not zero-padded to text_len (cross-attention over the real tokens only)
    "text_padding": dict(variant="fp32", run="text"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_parity_detects_changed_detail(name, monkeypatch):
    m = MUTATIONS[name]
    if "patch" in m:
        monkeypatch.setattr(*m["patch"])
    kw = dict(blocks=2)
    if m.get("run") == "text":
        n_text = read_safetensors(harness.GOLDEN_DIR / "inputs.safetensors")["text_context"].shape[0]
        kw["cfg_override"] = {"text_len": n_text}
    elif "run" in m:
        kw.update(m["run"])
    res = harness.run(m["variant"], force="ref", **kw)
    failures = harness.parity_failures(res, m["variant"])
    assert failures, f"changing {name} went unnoticed by the parity check"
