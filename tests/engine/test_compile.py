"""`compile=True` (model/compile.py): the DiT blocks under torch.compile (inductor, C++ on CPU).

The compiled run fuses the elementwise ops into its own loops, so it is not bit-equal to eager;
it must pass the same rule every fast provider passes (ops/tolerance.py): its error against an
fp32 reference-ops run at most 2x the bf16 reference-ops run's own error, plus noise atol.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from liveavatar_rt import Pipeline
from liveavatar_rt.model.compile import COMPILE_REF_OPS, compile_forced
from liveavatar_rt.ops.tolerance import provider_tolerance

FACE = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
PCM = (0.2 * np.sin(2 * np.pi * 190 * np.arange(24000) / 16000)).astype(np.float32)  # 1.5 s: 4 blocks


def latents(**kw) -> tuple[torch.Tensor, Pipeline]:
    pipe = Pipeline.from_pretrained("tiny", quiet=True, max_area=64 * 64, **kw)
    with pipe.session(FACE, seed=0) as sess:
        sess.push_audio(PCM, 16000)
        sess.end_audio()
        return torch.cat([b.latent.double() for b in sess.frames()]), pipe


@pytest.fixture(scope="module")
def runs():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        compiled, pipe = latents(compile=True)
        ref, _ = latents(force_provider="ref")
        oracle, _ = latents(force_provider="ref", dtype=torch.float32)
        eager, _ = latents()
    finally:
        torch.set_num_threads(threads)
    return compiled, ref, oracle, eager, pipe


def test_compiled_blocks_pass_the_provider_rule(runs):
    compiled, ref, oracle, eager, pipe = runs
    assert pipe.compiled and all(hasattr(b.forward, "_torchdynamo_orig_callable") for b in pipe.model.blocks)
    err = (compiled - oracle).abs().max().item()
    allowed = provider_tolerance(ref, oracle, torch.bfloat16)
    assert torch.isfinite(compiled).all() and err <= allowed, (err, allowed)
    assert not torch.equal(compiled, eager)  # it really ran other code (fused elementwise loops)


def test_compiled_model_keeps_its_keys_and_elementwise_references(runs):
    *_, pipe = runs
    assert all(pipe.model.ops.chosen[name] == "ref" for name in COMPILE_REF_OPS)
    assert not any("_orig_mod" in k for k in pipe.model.state_dict())  # save / quantize unaffected


def test_compile_forced_keeps_what_the_user_forces():
    assert compile_forced("layer_norm=cpu")["layer_norm"] == "cpu"
    assert compile_forced({"rms_norm": "cpu"})["modulate"] == "ref"
    assert set(compile_forced(None)) >= set(COMPILE_REF_OPS)
