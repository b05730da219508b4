"""The bundled tiny model's single-file format: save -> load round trip, clear errors, and the
pipeline picking the file up."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from liveavatar_rt.config import from_name
from liveavatar_rt.engine import pipeline as pipeline_mod
from liveavatar_rt.io.tiny import load_tiny, save_tiny
from liveavatar_rt.model import CausalWanS2V
from liveavatar_rt.model.init import init_random_
from liveavatar_rt.model.vae import VAEConfig, WanVAE
from liveavatar_rt.ops import OpTable


def _random_pair(seed=3):
    ops = OpTable("cpu", torch.float32)
    model = init_random_(CausalWanS2V(from_name("tiny"), ops), seed=seed)
    vcfg = VAEConfig(dim=8, latent_mean=[0.1 * i for i in range(16)], latent_std=[1 + 0.01 * i for i in range(16)])
    vae = WanVAE(vcfg, dtype=torch.float32, ops=ops).init_random_(seed)
    return model, vae, vcfg


def test_round_trip_keeps_weights_config_and_info(tmp_path):
    model, vae, vcfg = _random_pair()
    path = tmp_path / "tiny.safetensors"
    save_tiny(path, model.state_dict(), vae.state_dict(), vcfg, info={"stages": {"teacher": 10}})
    m2, v2, meta = load_tiny(path, OpTable("cpu", torch.bfloat16))
    assert meta["info"] == {"stages": {"teacher": 10}}
    for k, p in model.state_dict().items():
        assert torch.equal(m2.state_dict()[k], p.bfloat16()), k
    for k, p in vae.state_dict().items():
        assert torch.equal(v2.state_dict()[k], p.bfloat16()), k
    assert v2.config.latent_mean == pytest.approx(vcfg.latent_mean)
    assert v2.config.latent_std == pytest.approx(vcfg.latent_std)
    assert v2.dtype == torch.bfloat16 and not any(p.requires_grad for p in v2.parameters())


def test_not_a_tiny_file_is_named(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a liveavatar_rt tiny model file"):
        load_tiny(path, OpTable("cpu", torch.float32))


def test_wrong_shapes_are_named(tmp_path):
    model, vae, vcfg = _random_pair()
    sd = dict(model.state_dict())
    sd["head.head.weight"] = sd["head.head.weight"][:, :5]
    path = tmp_path / "tiny.safetensors"
    save_tiny(path, sd, vae.state_dict(), vcfg)
    with pytest.raises(ValueError, match="head.head.weight"):
        load_tiny(path, OpTable("cpu", torch.float32))


def test_pipeline_uses_the_bundled_file(tmp_path, monkeypatch):
    model, vae, vcfg = _random_pair(seed=11)
    save_tiny(tmp_path / "tiny.safetensors", model.state_dict(), vae.state_dict(), vcfg)
    monkeypatch.setattr(pipeline_mod, "PACKAGED_WEIGHTS", tmp_path)
    monkeypatch.delenv("LIVEAVATAR_RT_TINY_RANDOM", raising=False)
    pipe = pipeline_mod.Pipeline.from_pretrained("tiny", dtype=torch.float32, quiet=True)
    assert pipe.note == ""
    assert torch.equal(pipe.model.head.head.weight, model.head.head.weight.bfloat16().float())
    monkeypatch.setenv("LIVEAVATAR_RT_TINY_RANDOM", "1")
    rnd = pipeline_mod.Pipeline.from_pretrained("tiny", dtype=torch.float32, quiet=True)
    assert "random weights" in rnd.note
    assert not np.allclose(rnd.model.head.head.weight.numpy(), pipe.model.head.head.weight.numpy())


def test_pipeline_loads_a_tiny_file_by_path(tmp_path):
    model, vae, vcfg = _random_pair(seed=5)
    path = tmp_path / "candidate.safetensors"
    save_tiny(path, model.state_dict(), vae.state_dict(), vcfg)
    pipe = pipeline_mod.Pipeline.from_pretrained(path, dtype=torch.float32, quiet=True)
    assert torch.equal(pipe.model.head.head.weight, model.head.head.weight.bfloat16().float())
    assert pipe.vae.config.latent_std == pytest.approx(vcfg.latent_std)
    import hashlib

    assert pipe.weights["file"] == str(path) and pipe.weights["info"] == {}
    assert pipe.weights["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="not a liveavatar_rt tiny model file"):
        pipeline_mod.Pipeline.from_pretrained(other, quiet=True)
