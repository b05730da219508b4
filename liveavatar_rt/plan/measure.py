"""Byte figures of each part of a rank, measured by running the runtime's own code.

`dit_figures` builds a `BlockStepper` (the allocator of the ring caches and of the conditioning
cache) on the model's device, runs its text embedding, conditioning prefill and one denoising
step under `LiveBytes`, and reads the bytes the caches hold. `vae_figures` does the same for
the conditioning encode and the streaming decoder. On the meta device nothing is allocated, so
the 14B model costs seconds; on CPU with real weights the same functions measure real tensors
(tests compare the two).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cache import RingCache
from ..config import StreamConfig
from ..engine.conditioning import WARM_LATENTS
from ..engine.stepper import BlockStepper
from ..model import CausalWanS2V
from ..model.fp8 import Fp8Linear
from ..model.vae import WanVAE
from ..ops.kv_fp8 import E4M3, quantize_kv
from .models import module_bytes, storage_bytes
from .tracker import LiveBytes


@dataclass(frozen=True)
class DitFigures:
    """Bytes: weights (the whole generator); ring, ring_fp8: ONE step's RingCache as the runtime
    allocates it (compute dtype; kv_cache_dtype="fp8": E4M3 + fp32 per-token-per-head scales);
    cond, cond_fp8: the conditioning cache (as stored / as CondCache quantizes it), shared by a
    rank's steps; text_kv: the cross-attention K/V a stepper
    keeps per session; step_peak: most bytes alive during one step (forward + Euler update)
    above the weights/caches/inputs; prefill_peak: the same for the conditioning prefill
    (it includes the conditioning cache it writes)."""

    weights: int
    ring: int
    ring_fp8: int
    cond: int
    cond_fp8: int
    text_kv: int
    step_peak: int
    prefill_peak: int


def latent_dtype(model: CausalWanS2V) -> torch.dtype:
    """Pipeline.latent_dtype: fp32 between steps with fp8 linears, else the compute dtype."""
    fp8 = any(isinstance(m, Fp8Linear) for m in model.modules())
    return torch.float32 if fp8 else model.ops.dtype


def fp8_kv_bytes(t: torch.Tensor) -> int:
    """A K or V tensor [..., H, D] as the fp8 CondCache stores it: `quantize_kv`'s outputs (E4M3
    codes + one fp32 scale per token per head), computed on the meta device."""
    return storage_bytes(*quantize_kv(torch.empty(t.shape, dtype=t.dtype, device="meta")))


def fp8_ring_bytes(ring: RingCache) -> int:
    """`ring`'s shape allocated by RingCache itself with kv_dtype=E4M3 (codes + scales)."""
    L, B, cap, H, D = ring.k.shape
    return storage_bytes(*RingCache(L, B, cap, H, D, ring.dtype, "meta", kv_dtype=E4M3).tensors())


@torch.no_grad()
def dit_figures(model: CausalWanS2V, stream: StreamConfig, latent_hw: tuple[int, int]) -> DitFigures:
    """Measure on model.ops.device (meta: sizes only). latent_hw: (h, w) latent size."""
    cfg, ops = model.cfg, model.ops
    dev, dt = ops.device, ops.dtype
    h, w = latent_hw
    stepper = BlockStepper(model, stream, latent_hw, steps=[0])
    ring = stepper.rings[0]
    stepper.set_text(torch.randn(cfg.text_len, cfg.text_dim, dtype=dt, device=dev))
    ref = torch.randn(1, cfg.in_dim, 1, h, w, dtype=dt, device=dev)
    motion = torch.randn(1, cfg.in_dim, stream.motion_latent_frames, h, w, dtype=dt, device=dev)
    with LiveBytes(dev) as pre:
        stepper.prefill(ref, motion)
    x = torch.randn(1, cfg.in_dim, stream.frames_per_block, h, w, dtype=latent_dtype(model), device=dev)
    feats = torch.randn(1, cfg.audio_layers, cfg.audio_dim, 4 * stream.frames_per_block, dtype=dt, device=dev)
    audio = stepper.audio(feats)
    block = stream.cache_frames // stream.frames_per_block  # the ring is full: the steady state
    with LiveBytes(dev) as step:
        stepper.step(0, x, block, audio, torch.zeros_like(x))
    cond = [t for kv in (stepper.cond.k, stepper.cond.v) for t in kv]
    return DitFigures(
        weights=module_bytes(model), ring=storage_bytes(ring.k, ring.v), ring_fp8=fp8_ring_bytes(ring),
        cond=storage_bytes(*cond), cond_fp8=sum(fp8_kv_bytes(t) for t in cond),
        text_kv=storage_bytes(*(t for kv in stepper.text_kv for t in kv)),
        step_peak=step.peak, prefill_peak=pre.peak)


@dataclass(frozen=True)
class VaeFigures:
    """Bytes: decoder (decoder + conv2 + latent tables: what decoding uses); encoder (encoder +
    conv1: the conditioning encode at session start); decode_state: the streaming decoder's
    causal cache after the published warm-up; decode_peak: most bytes alive while one block
    decodes, above that state; encode_peak: the conditioning encode (reference + motion video)."""

    decoder: int
    encoder: int
    decode_state: int
    decode_peak: int
    encode_peak: int


@torch.no_grad()
def vae_figures(vae: WanVAE, stream: StreamConfig, size: tuple[int, int]) -> VaeFigures:
    """size: (H, W) pixels. Runs what engine/conditioning.py and the VAE rank run."""
    dev = vae.latent_mean.device
    H, W = size
    sf = vae.config.space_factor
    z = vae.config.z_dim
    dec_bytes = module_bytes(vae.decoder) + module_bytes(vae.conv2) + storage_bytes(vae.latent_mean, vae.latent_inv_std)
    enc_bytes = module_bytes(vae.encoder) + module_bytes(vae.conv1)
    warm = torch.randn(z, WARM_LATENTS, H // sf, W // sf, device=dev)
    with LiveBytes(dev) as state:
        decoder = vae.new_stream()
        decoder.decode(warm)  # output dropped at once, as warmed_decoder does: `live` is the cache
    decode_state = state.live  # now: later decodes replace the cache entries (freeing these)
    block = torch.randn(z, stream.frames_per_block, H // sf, W // sf, device=dev)
    with LiveBytes(dev) as dec:
        decoder.decode(block)
    ref = torch.randn(3, H, W, device=dev)
    with LiveBytes(dev) as enc:
        vae.encode(ref[:, None])
        vae.encode(ref[:, None].expand(-1, stream.motion_frames, -1, -1))
    return VaeFigures(decoder=dec_bytes, encoder=enc_bytes, decode_state=decode_state, decode_peak=dec.peak,
                      encode_peak=enc.peak)
