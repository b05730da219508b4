"""`WanVAE.moments` (the differentiable encoder path training uses): streaming it chunk by
chunk through one cache equals one call, and its mu is what `encode` normalises."""
from __future__ import annotations

import torch

from liveavatar_rt.model.vae import VAEConfig, WanVAE
from liveavatar_rt.model.vae_blocks import CausalCache
from liveavatar_rt.ops import OpTable


def _vae():
    return WanVAE(VAEConfig(dim=8), dtype=torch.float32, ops=OpTable("cpu", torch.float32, force="ref")).init_random_(4)


def test_streamed_moments_equal_one_call():
    vae = _vae()
    x = torch.rand(1, 3, 13, 16, 16) * 2 - 1
    mu, lv = vae.moments(x)
    cache = CausalCache(vae.encoder.n_slots)
    parts = [vae.moments(x[:, :, :5], cache), vae.moments(x[:, :, 5:9], cache), vae.moments(x[:, :, 9:], cache)]
    torch.testing.assert_close(torch.cat([p[0] for p in parts], dim=2), mu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([p[1] for p in parts], dim=2), lv, rtol=1e-5, atol=1e-5)
    assert mu.shape[2] == 4


def test_encode_is_normalised_mu_and_moments_are_differentiable():
    vae = _vae()
    x = (torch.rand(1, 3, 5, 16, 16) * 2 - 1)
    mu, _ = vae.moments(x)
    z = vae.encode(x[0])
    want = (mu[0] - vae.latent_mean.view(-1, 1, 1, 1)) * vae.latent_inv_std.view(-1, 1, 1, 1)
    torch.testing.assert_close(z, want, rtol=1e-6, atol=1e-6)
    vae.requires_grad_(True)
    vae.moments(x)[0].square().sum().backward()
    assert vae.encoder.conv1.weight.grad.abs().sum() > 0
