"""Checkpoint loading: sharded layouts, LoRA key variants, precise errors."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from liveavatar_rt.config import from_name
from liveavatar_rt.io import load_dit, merge_lora_weight, parse_lora
from liveavatar_rt.model import CausalWanS2V

CFG = from_name("tiny").replace(num_layers=1, audio_inject_layers=(0,))


def _random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = CausalWanS2V(CFG)
    return {k: (torch.randn(p.shape, generator=g) * 0.05).to(torch.bfloat16) for k, p in model.named_parameters()}


def test_sharded_directory_equals_single_file(tmp_path):
    state = _random_state()
    save_file(state, tmp_path / "single.safetensors")
    keys = sorted(state)
    half = len(keys) // 2
    shard_dir = tmp_path / "sharded"
    shard_dir.mkdir()
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, shard_dir / name)
    index = {"weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (shard_dir / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    a = load_dit(tmp_path / "single.safetensors", CFG)
    b = load_dit(shard_dir, CFG)
    for (ka, pa), (kb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(pa, pb)
        assert pa.dtype == torch.bfloat16


def test_missing_shard_is_named(tmp_path):
    (tmp_path / "x.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        load_dit(tmp_path, CFG)


def test_wrong_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dit(tmp_path / "nope", CFG)


def test_missing_unexpected_and_mismatched_keys_are_listed(tmp_path):
    state = _random_state()
    del state["head.head.bias"]
    state["blocks.0.extra.weight"] = torch.zeros(3)
    state["patch_embedding.bias"] = torch.zeros(7, dtype=torch.bfloat16)
    save_file(state, tmp_path / "m.safetensors")
    with pytest.raises(ValueError) as err:
        load_dit(tmp_path / "m.safetensors", CFG)
    msg = str(err.value)
    assert "head.head.bias" in msg and "missing" in msg
    assert "blocks.0.extra.weight" in msg and "unexpected" in msg
    assert "patch_embedding.bias: checkpoint (7,) vs model (128,)" in msg


@pytest.mark.parametrize("prefix,suffix", [("", ""), ("base_model.model.", ""), ("", ".default"),
                                           ("base_model.model.", ".default")])
def test_lora_key_variants_merge_the_same(tmp_path, prefix, suffix):
    state = _random_state()
    save_file(state, tmp_path / "m.safetensors")
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 128, generator=g).to(torch.bfloat16)
    b = torch.randn(128, 4, generator=g).to(torch.bfloat16)
    lora = {f"{prefix}blocks.0.self_attn.q.lora_A{suffix}.weight": a, f"{prefix}blocks.0.self_attn.q.lora_B{suffix}.weight": b}
    model = load_dit(tmp_path / "m.safetensors", CFG, lora=lora, lora_scale=0.5)
    want = (state["blocks.0.self_attn.q.weight"].float() + (b.float() @ a.float()) * 0.5).to(torch.bfloat16)
    assert torch.equal(model.blocks[0].self_attn.q.weight, want)
    assert torch.equal(model.blocks[0].self_attn.k.weight, state["blocks.0.self_attn.k.weight"])


def test_lora_errors_are_precise(tmp_path):
    with pytest.raises(ValueError, match="only lora_A"):
        parse_lora({"x.q.lora_A.weight": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="not of the form"):
        parse_lora({"x.q.weight": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="do not chain"):
        parse_lora({"x.q.lora_A.weight": torch.zeros(2, 3), "x.q.lora_B.weight": torch.zeros(3, 5)})
    with pytest.raises(ValueError, match="weight is"):
        merge_lora_weight(torch.zeros(4, 4), torch.zeros(2, 3), torch.zeros(4, 2), 0.5, "w")
    state = _random_state()
    save_file(state, tmp_path / "m.safetensors")
    with pytest.raises(KeyError, match="does not have"):
        load_dit(tmp_path / "m.safetensors", CFG, lora={"nope.q.lora_A.weight": torch.zeros(2, 3),
                                                          "nope.q.lora_B.weight": torch.zeros(3, 2)})
