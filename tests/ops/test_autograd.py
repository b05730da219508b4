"""Providers without a backward never give silently wrong gradients: a call that needs
gradients runs the op's reference (registry._grad_safe), inference calls the provider.

(A VAE trained through the default table once got no gradient through its attention provider,
so everything below the attention block learned from truncated gradients.)"""
import torch

from liveavatar_rt.model.vae import VAEConfig, WanVAE
from liveavatar_rt.model.vae_blocks import CausalCache
from liveavatar_rt.ops import OPS, OpTable
from liveavatar_rt.ops.registry import Op


def _op_with_detached_provider():
    calls = []

    def reference(x):
        calls.append("ref")
        return x * 2

    def provider(x):  # right values, no gradient: what a C++/Triton kernel looks like to autograd
        calls.append("provider")
        return (x * 2).detach()

    op = Op("double", reference)
    op.register("fast", provider, priority=1, supports=lambda d, t: None)
    return op, calls


def test_grad_call_runs_reference_and_inference_runs_provider():
    op, calls = _op_with_detached_provider()
    _, fn = op.select(torch.device("cpu"), torch.float32)
    x = torch.ones(3, requires_grad=True)
    fn(x).sum().backward()
    assert calls == ["ref"] and torch.equal(x.grad, torch.full((3,), 2.0))
    with torch.no_grad():
        fn(x)
    fn(torch.ones(3))  # grad mode on, nothing requires grad
    fn([torch.ones(3)][0].detach())
    assert calls == ["ref", "provider", "provider", "provider"]


def test_tensor_lists_count_as_needing_grad():
    op = Op("cat2", lambda xs: torch.cat(xs) * 2)
    op.register("fast", lambda xs: (torch.cat(xs) * 2).detach(), priority=1, supports=lambda d, t: None)
    _, fn = op.select(torch.device("cpu"), torch.float32)
    a = torch.ones(2, requires_grad=True)
    assert fn([a, torch.ones(1)]).requires_grad


def test_differentiable_provider_is_called_directly():
    op = Op("triple", lambda x: x * 3)
    fast = lambda x: x * 3  # noqa: E731
    op.register("fast", fast, priority=1, supports=lambda d, t: None, differentiable=True)
    assert op.select(torch.device("cpu"), torch.float32)[1] is fast


def test_only_declared_providers_skip_the_guard():
    for op in OPS.values():
        for p in op.providers:
            assert p.differentiable or hasattr(p.fn, "__wrapped__"), (op.name, p.name)


def _vae_grads(force):
    vae = WanVAE(VAEConfig(dim=8), dtype=torch.float32, ops=OpTable("cpu", torch.float32, force=force)).init_random_(0)
    vae.requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 5, 16, 16, generator=g) * 2 - 1
    mu, _ = vae.moments(x)
    (vae.decode_raw(mu, CausalCache(vae.decoder.n_slots)) - x).abs().mean().backward()
    return {n: p.grad for n, p in vae.named_parameters()}


def test_vae_gradients_through_default_table_match_reference():
    fast, ref = _vae_grads(None), _vae_grads("ref")
    assert OpTable("cpu", torch.float32).chosen["attention"] != "ref"  # the case that broke
    for name, g in ref.items():
        assert fast[name] is not None, name
        assert torch.allclose(fast[name], g, rtol=1e-3, atol=1e-6), name
