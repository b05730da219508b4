"""A differentiable multi-block forward of the runtime's `CausalWanS2V`, with the inference
engine's attention pattern, for training.

At inference (engine/stepper.py) block b of a stream runs step i as: queries of its 3 latent
frames attend [ring cache i: the rotated K/V of the last 4 blocks at step i, itself included ;
the conditioning K/V of the t = 0 prefill, rotated at the block's sink position
`ref_time(first_frame, offset)`]. Here a window of `n` consecutive blocks runs in one forward:
- `causal=True` (the student): block b attends blocks max(0, b-3) .. b of the window - exactly
  what its ring holds when every earlier block ran step i from these same inputs (timestep
  forcing: all blocks of the window sit at the same noise level);
- `causal=False` (the bidirectional teacher): every block attends every block of the window.
Conditioning K/V come from a differentiable `cond_pass` through the runtime's own `CondCache`,
so the gradient reaches every conditioning weight the runtime uses.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from liveavatar_rt.cache import CondCache
from liveavatar_rt.config import StreamConfig
from liveavatar_rt.engine.positions import ref_time
from liveavatar_rt.model import CausalWanS2V
from liveavatar_rt.model.rope import motion_positions, noisy_positions, ref_positions, rope_cos_sin

RING_BLOCKS = StreamConfig().cache_frames // StreamConfig().frames_per_block  # 4


@dataclass
class Placement:
    """Where a window sits in a stream: its first latent frame and each block's sink offset."""

    first_frame: int
    offsets: list[int]

    @staticmethod
    def sample(rng, blocks: int, stream: StreamConfig = StreamConfig(), max_start: int = 600) -> "Placement":
        """A random window start (multiple of the block size: a stream starts at 0 and advances a
        block at a time) and per-block offsets from the published sink range."""
        F = stream.frames_per_block
        start = 0 if rng.random() < 0.25 else int(rng.integers(0, max_start // F)) * F
        lo, hi = stream.sink_offset_range
        return Placement(start, [int(rng.integers(lo, hi + 1)) for _ in range(blocks)])


def rope32(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`ops.rope_apply` in fp32 (training: the float64 product of the reference costs ~3x more
    and changes nothing at fp32 training precision). x [B, L, H, D]; cos/sin [L, D/2]."""
    B, L, H, D = x.shape
    a, b = x.float().unflatten(-1, (D // 2, 2)).unbind(-1)
    c, s = cos.float().view(1, L, 1, D // 2), sin.float().view(1, L, 1, D // 2)
    return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2).to(x.dtype)


class TrainForward:
    def __init__(self, model: CausalWanS2V, latent_hw: tuple[int, int], stream: StreamConfig = StreamConfig()):
        self.model, self.stream, self.cfg = model, stream, model.cfg
        self.h, self.w = latent_hw[0] // 2, latent_hw[1] // 2  # patch grid
        self.S = self.h * self.w
        self.motion_pos = motion_positions(self.h, self.w, self.cfg.zip_frame_buckets)

    def _cond_rope(self, t: int):
        return rope_cos_sin(torch.cat([ref_positions(t, self.h, self.w), self.motion_pos]), self.cfg)

    def text_kv(self, batch: int, text: torch.Tensor | None = None):
        """The session text (tiny: zeros [1, text_dim], as the pipeline's default), per batch row."""
        ops = self.model.ops
        text = torch.zeros(1, self.cfg.text_dim, dtype=ops.dtype) if text is None else text
        return self.model.text_kv(text[None].expand(batch, -1, -1))

    def cond(self, ref_latent: torch.Tensor, motion: torch.Tensor, text_kv) -> CondCache:
        """ref_latent [B, 16, 1, h, w], motion [B, 16, 19, h, w] -> conditioning K/V (with grad)."""
        cache = CondCache(self.cfg.num_layers)
        cos, sin = self._cond_rope(self.cfg.ref_time_index)
        ops = self.model.ops
        self.model.cond_pass(ref_latent, motion, text_kv, lambda i: cache.prefill_attend(i, cos, sin, ops))
        return cache

    def audio(self, feats: torch.Tensor):
        """feats [B, n, layers, dim, 12] per-block features -> (tokens, glob) for the window's 3n
        latent frames, each block encoded on its own as the engine does."""
        s = self.stream
        parts = [self.model.audio_tokens(feats[:, b], s.audio_prefix_frames, s.motion_latent_frames)
                 for b in range(feats.shape[1])]
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: CondCache, text_kv, audio, place: Placement,
                 causal: bool) -> torch.Tensor:
        """x [B, 16, 3n, h, w] noisy latents, t [B, 3n] timesteps -> velocity [B, 16, 3n, h, w]."""
        ops, F = self.model.ops, self.stream.frames_per_block
        Fw = x.shape[2]
        n = Fw // F
        cos, sin = rope_cos_sin(noisy_positions(place.first_frame, Fw, self.h, self.w), self.cfg)
        cond_rope = [tuple(r.float() for r in self._cond_rope(ref_time(place.first_frame + b * F, place.offsets[b],
                                                                       self.cfg.ref_time_index)))
                     for b in range(n)]
        L = F * self.S  # tokens per block

        def attend(layer: int):
            def fn(q, k, v):
                q, k = rope32(q, cos, sin), rope32(k, cos, sin)
                ck, cv = cond.k[layer], cond.v[layer]
                outs = []
                for b in range(n):
                    lo = max(0, b - RING_BLOCKS + 1) * L if causal else 0
                    hi = (b + 1) * L if causal else n * L
                    kc = rope32(ck, *cond_rope[b])
                    outs.append(ops.attention(q[:, b * L:(b + 1) * L], torch.cat([k[:, lo:hi], kc], dim=1),
                                              torch.cat([v[:, lo:hi], cv], dim=1)))
                return torch.cat(outs, dim=1)
            return fn

        cond_states = torch.zeros_like(x)
        return self.model(x, t, cond_states, text_kv, audio, attend)
