"""precision="fp8" loading (model/fp8.py, io/checkpoint.py): the published target set, quantizing
while the shards stream in, saving and reloading a quantized checkpoint, clear refusals."""
from __future__ import annotations

import json

import pytest
import torch

from liveavatar_rt.config import ModelConfig, from_name
from liveavatar_rt.io import load_dit, published_config
from liveavatar_rt.io.checkpoint import save_fp8_dit
from liveavatar_rt.model import CausalWanS2V
from liveavatar_rt.model.fp8 import FP8_IGNORE, Fp8Linear, fp8_targets, to_fp8
from liveavatar_rt.model.layers import Linear
from liveavatar_rt.ops import OpTable
from liveavatar_rt.ops.fp8_linear import E4M3, quantize_e4m3
from tests.golden import harness

GOLDEN = harness.GOLDEN_DIR
needs_golden = pytest.mark.skipif(not (GOLDEN / "config.json").is_file(), reason=f"golden fixtures not found at {GOLDEN}")


def test_targets_are_the_published_set():
    """Every Linear but the published ignore list: attention q/k/v/o (self, cross, audio
    injector), the FFN and the injector's AdaLN linears."""
    cfg = from_name("tiny")
    model = CausalWanS2V(cfg, OpTable("cpu", torch.bfloat16))
    linears = {n for n, m in model.named_modules() if isinstance(m, Linear)}
    targets = set(fp8_targets(model))
    kept = linears - targets
    assert kept and all(any(k in n for k in FP8_IGNORE) for k in [None] for n in kept)
    assert {"head.head", "casual_audio_encoder.encoder.final_linear", "time_projection.1"} <= kept
    assert not any(k in n for n in targets for k in FP8_IGNORE)
    per_layer = {f"blocks.0.{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo"} | {"blocks.0.ffn.0", "blocks.0.ffn.2"}
    assert per_layer <= targets
    n_inj = len(cfg.audio_inject_layers)
    assert sum(n.startswith("audio_injector.injector.") for n in targets) == 4 * n_inj
    assert sum(n.startswith("audio_injector.injector_adain_layers.") for n in targets) == n_inj


def test_to_fp8_quantizes_a_loaded_model_in_place():
    model = CausalWanS2V(from_name("tiny"), OpTable("cpu", torch.bfloat16))
    from liveavatar_rt.model.init import init_random_

    init_random_(model, seed=0)
    w = model.blocks[0].ffn[0].weight.detach().clone()
    to_fp8(model)
    lin = model.blocks[0].ffn[0]
    assert isinstance(lin, Fp8Linear) and lin.weight.dtype == E4M3
    w8, inv = quantize_e4m3(w)
    assert torch.equal(lin.weight.view(torch.uint8), w8.view(torch.uint8)) and torch.equal(lin.weight_scale, inv)
    assert isinstance(model.head.head, Linear) and model.head.head.weight.dtype == torch.bfloat16


def _load(precision="bf16", path=None, lora=True):
    conf = harness.settings()
    return load_dit(path or GOLDEN / conf["weights"]["file"], published_config(GOLDEN), dtype=torch.bfloat16,
                    lora=GOLDEN / conf["lora"]["file"] if lora else None, lora_scale=conf["lora"]["scaling"],
                    precision=precision)


def _fp8_state(model):
    return {k: (v.view(torch.uint8) if v.dtype == E4M3 else v) for k, v in model.state_dict().items()}


@needs_golden
def test_quantizing_while_loading_equals_quantizing_the_merged_model():
    """LoRA merged first, then the published rule, tensor by tensor as the shards are read."""
    streamed = _fp8_state(_load("fp8"))
    after = _fp8_state(to_fp8(_load("bf16")))
    assert streamed.keys() == after.keys()
    assert all(torch.equal(streamed[k], after[k]) for k in streamed)
    assert sum(k.endswith("weight_scale") for k in streamed) == len(fp8_targets(CausalWanS2V(published_config(GOLDEN))))


@needs_golden
def test_a_saved_fp8_checkpoint_reloads_identically_and_refuses_misuse(tmp_path):
    model = _load("fp8")
    path = tmp_path / "dit_fp8.safetensors"
    save_fp8_dit(model, path)
    again = _load("fp8", path=path, lora=False)
    a, b = _fp8_state(model), _fp8_state(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    target_elems = sum(m.weight.numel() for m in model.modules() if isinstance(m, Fp8Linear))
    bf16_bytes = sum(t.numel() * 2 for t in model.state_dict().values())
    assert path.stat().st_size < bf16_bytes - target_elems + 64 * 1024  # targets at 1 byte, + header
    with pytest.raises(ValueError, match="load it with precision='fp8'"):
        _load("bf16", path=path, lora=False)
    with pytest.raises(ValueError, match="without a LoRA"):
        _load("fp8", path=path, lora=True)
    with pytest.raises(ValueError, match="no fp8 layers"):
        save_fp8_dit(_load("bf16"), tmp_path / "x.safetensors")


def test_precision_is_checked():
    with pytest.raises(ValueError, match="not one of"):
        load_dit("nowhere", ModelConfig(), precision="int4")
    with pytest.raises(ValueError, match="bf16"):
        load_dit("nowhere", ModelConfig(), dtype=torch.float32, precision="fp8")
