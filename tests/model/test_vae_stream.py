"""Streaming-decode mechanics of WanVAE on a random tiny model (fp32), input checks, loader errors."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from liveavatar_rt.io.vae_loading import VAECheckpointError, load_vae
from liveavatar_rt.model.vae import VAEConfig, WanVAE

CFG = VAEConfig(dim=4)  # production architecture at base dim 4: channels 4..16, z 16


@pytest.fixture(scope="module")
def vae():
    return WanVAE(CFG, dtype=torch.float32).init_random_(seed=7)


@pytest.fixture(scope="module")
def latent():
    return torch.randn(16, 6, 2, 3, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def full(vae, latent):
    return vae.decode(latent)


def test_full_decode_shape(full):
    assert full.shape == (3, 1 + 4 * 5, 16, 24) and full.dtype == torch.float32
    assert full.abs().max() <= 1.0


@pytest.mark.parametrize("sizes", [[6], [1, 5], [3, 3], [2, 1, 3], [1, 1, 1, 1, 1, 1]])
def test_stream_in_chunks_equals_full_decode(vae, latent, full, sizes):
    stream = vae.new_stream()
    outs, start = [], 0
    for i, n in enumerate(sizes):
        out = stream(latent[:, start:start + n])
        # First call: its first latent frame gives 1 frame; every other latent frame gives 4.
        assert out.shape[1] == 4 * n - (3 if i == 0 else 0)
        outs.append(out)
        start += n
    assert torch.equal(torch.cat(outs, dim=1), full)


def test_reset_restarts_the_stream(vae, latent, full):
    vae.reset_stream()
    vae.stream_decode(latent[:, 2:6])  # a warm-up: its history changes what follows ...
    after_warmup = vae.stream_decode(latent[:, 1:3])
    assert after_warmup.shape == full[:, 1:9].shape and not torch.equal(after_warmup, full[:, 1:9])
    vae.reset_stream()  # ... until reset
    assert torch.equal(torch.cat([vae.stream_decode(latent[:, :2]), vae.stream_decode(latent[:, 2:])], 1), full)


def test_encode_shape(vae):
    video = torch.rand(3, 9, 16, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = vae.encode(video)
    assert z.shape == (16, 3, 2, 3) and z.dtype == torch.float32 and torch.isfinite(z).all()


@pytest.mark.parametrize("shape", [(16, 2, 3), (8, 2, 2, 3), (1, 16, 2, 2, 3), (16, 0, 2, 3)])
def test_bad_latent_shape_raises(vae, shape):
    stream = vae.new_stream()
    with pytest.raises(ValueError, match="latent"):
        stream(torch.zeros(shape))
    assert stream.first_decode  # a rejected call must not consume the first-decode state
    with pytest.raises(ValueError, match="latent"):
        vae.decode(torch.zeros(shape))


@pytest.mark.parametrize("shape", [(3, 4, 16, 24), (3, 5, 12, 24), (4, 5, 16, 24), (5, 16, 24)])
def test_bad_video_shape_raises(vae, shape):
    with pytest.raises(ValueError, match="video"):
        vae.encode(torch.zeros(shape))


def test_loader_names_every_problem(vae, tmp_path):
    sd = {k: v.clone() for k, v in vae.state_dict().items()}
    del sd["decoder.head.2.bias"]
    sd["encoder.extra.weight"] = torch.zeros(1)
    sd["conv2.weight"] = torch.zeros(16, 16, 3, 1, 1)
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    with pytest.raises(VAECheckpointError) as err:
        load_vae(path, CFG, torch.float32)
    msg = str(err.value)
    assert "decoder.head.2.bias" in msg and "encoder.extra.weight" in msg
    assert "conv2.weight" in msg and "(16, 16, 3, 1, 1)" in msg and "(16, 16, 1, 1, 1)" in msg


def test_loader_roundtrip_pth(vae, latent, full, tmp_path):
    path = tmp_path / "vae.pth"
    torch.save(vae.state_dict(), path)
    loaded = load_vae(path, CFG, torch.float32)
    assert torch.equal(loaded.decode(latent[:, :2]), full[:, :5])
