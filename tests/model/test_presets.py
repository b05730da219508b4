"""Presets build on the meta device with the published sizes and key names."""
from __future__ import annotations

import pytest
import torch

from liveavatar_rt.config import ModelConfig, from_name
from liveavatar_rt.io import read_safetensors
from liveavatar_rt.model import CausalWanS2V
from tests.golden import harness


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_s2v_14b_parameter_count_matches_published():
    model = CausalWanS2V(from_name("s2v-14b"))
    assert all(p.is_meta for p in model.parameters()), "the 14B preset must build without allocating"
    n = _count(model)
    # Wan2.2-S2V-14B: about 16.3B parameters including the audio encoder and injectors
    assert 16.25e9 < n < 16.35e9, n
    audio = sum(p.numel() for k, p in model.named_parameters() if "audio" in k)
    assert 1.9e9 < audio < 2.1e9, audio  # 12 injectors x (4 dim^2 + adain 2 dim^2) + encoder
    assert len([k for k in model.state_dict() if ".lora" in k]) == 0


def test_s2v_14b_lora_target_count():
    """SPEC 7: the suffix match q, k, v, o, ffn.0, ffn.2 adapts 448 Linears at 14B."""
    model = CausalWanS2V(from_name("s2v-14b"))
    suffixes = (".q", ".k", ".v", ".o", ".ffn.0", ".ffn.2")
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith(suffixes)]
    assert len(names) == 448


@pytest.mark.skipif(not (harness.GOLDEN_DIR / "model.safetensors").is_file(), reason="golden fixtures absent")
def test_tiny_preset_has_exactly_the_published_keys():
    golden = read_safetensors(harness.GOLDEN_DIR / "model.safetensors")
    model = CausalWanS2V(from_name("tiny"))
    shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
    assert shapes == {k: tuple(t.shape) for k, t in golden.items()}


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="num_heads"):
        ModelConfig(dim=130, num_heads=4)
    with pytest.raises(ValueError, match="audio_inject_layers"):
        ModelConfig(num_layers=4, audio_inject_layers=(0, 7))
    with pytest.raises(ValueError, match="unknown preset"):
        from_name("huge")


def test_rope_split_is_published():
    assert from_name("s2v-14b").rope_split == (44, 42, 42)
