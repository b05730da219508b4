"""Analytic DiT FLOPs of one denoising step of one block, from the ModelConfig.

Counts multiply-adds as 2 FLOPs, matmuls only (norms, RoPE, softmax and elementwise work are
< 1 % at these sizes and are left out, as FLOP/s figures conventionally do). With
S = (h/2)(w/2) tokens per latent frame, F latent frames per block, L = F S, C = dim:

    per layer   self-attn q,k,v,o     4 * 2 L C^2
                self-attn scores + PV 2 * 2 L Lk C,  Lk = ring tokens valid + conditioning tokens
                text cross-attn q,o   2 * 2 L C^2   (text K/V: once per session, not per step)
                text scores + PV      2 * 2 L Lt C,  Lt = text_len (published: zero-padded)
                FFN                   2 * 2 L C ffn_dim
    per audio-injected layer
                AdaLN linear          2 F C (2 C)
                q, o                  2 * 2 L C^2
                audio-token k, v      2 * 2 (F n) C^2,  n = num_audio_tokens + 1
                scores + PV           2 * 2 L n C   (each frame's S queries see its n tokens)
    once        patch + cond embed    2 * 2 L (16 * 4) C
                head                  2 L C (4 * out_dim)

The time embedding (2 F (freq_dim C + C^2 + 6 C^2)) depends on the step's timestep only: the
engine computes it once per step and session (BlockStepper.time_embedding), like the text K/V,
so it is not part of a block's work.

The ring holds min(cache_frames S, tokens so far incl. this block); the conditioning tokens are
the reference frame (S) plus the frame packer's buckets. `tests/benchmark/test_flops.py` checks
this count against torch's FlopCounterMode on the reference ops.
"""
from __future__ import annotations

from ..config import ModelConfig, StreamConfig

# frame-packer patch (time, space) per bucket, newest first: 1x2x2, 2x4x4, 4x8x8
_PACKER_PATCHES = ((1, 2), (2, 4), (4, 8))


def cond_tokens(cfg: ModelConfig, h: int, w: int) -> int:
    """Conditioning tokens Lc for an h x w latent: reference frame + packed motion frames."""
    n = (h // 2) * (w // 2)
    for frames, (pt, ps) in zip(cfg.zip_frame_buckets, _PACKER_PATCHES):  # (1, 2, 16) frames, newest first
        n += (frames // pt) * (h // ps) * (w // ps)
    return n


def step_flops(cfg: ModelConfig, stream: StreamConfig, latent_hw: tuple[int, int], block: int) -> dict:
    """FLOPs of one DiT forward (one step) of block `block` -> {"total", "linear", "attention"}."""
    h, w = latent_hw
    if h % 8 or w % 8:
        raise ValueError(f"latent size {latent_hw} must be divisible by 8")
    if block < 0:
        raise ValueError(f"block index must be >= 0, got {block}")
    C, Fr = cfg.dim, stream.frames_per_block
    S = (h // 2) * (w // 2)
    L = Fr * S
    cap = stream.cache_frames * S
    start = block * L
    valid = cap if start >= cap else start + L
    Lk = valid + cond_tokens(cfg, h, w)
    n_audio = cfg.num_audio_tokens + 1
    inject = len(cfg.audio_inject_layers)
    out_patch = 4 * cfg.out_dim

    linear = cfg.num_layers * (4 * 2 * L * C * C + 2 * 2 * L * C * C + 2 * 2 * L * C * cfg.ffn_dim)
    linear += inject * (2 * Fr * C * 2 * C + 2 * 2 * L * C * C + 2 * 2 * Fr * n_audio * C * C)
    linear += 2 * 2 * L * (cfg.in_dim * 4) * C + 2 * L * C * out_patch
    attention = cfg.num_layers * (2 * 2 * L * Lk * C + 2 * 2 * L * cfg.text_len * C) + inject * 2 * 2 * L * n_audio * C
    return {"total": linear + attention, "linear": linear, "attention": attention}


def block_flops(cfg: ModelConfig, stream: StreamConfig, latent_hw: tuple[int, int], block: int) -> int:
    """FLOPs of all denoising steps of one block."""
    return stream.sampling_steps * step_flops(cfg, stream, latent_hw, block)["total"]
