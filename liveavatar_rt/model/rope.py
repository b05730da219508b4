"""3D RoPE positions and rotation tables, as the published model builds them.

Each token has an integer (time, height, width) position. The head dim splits into time /
height / width parts (`ModelConfig.rope_split`, 44/42/42 real dims at head_dim 128). Angles are
float64 (`pos * theta^(-2i/d)`); the per-token tables the published run uses hold cos and sin
rounded to fp32 (complex64), so they are rounded to fp32 here too. (SPEC.md says complex fp16;
the golden fixtures, which define correctness, match fp32 rounding bit for bit and fp16 does not:
tests/golden checks this.) Negative positions (motion latents) use the
conjugate, which is the same as a negative angle.

Tables are computed from positions on the fly, not looked up in a 45000-entry table: the values
are identical to the published table inside its range, and nothing overflows outside it.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from ..config import ModelConfig

THETA = 10000.0


def _inv_freq(real_dim: int) -> torch.Tensor:
    """[real_dim/2] float64, exactly as the published rope_params computes it."""
    return 1.0 / torch.pow(THETA, torch.arange(0, real_dim, 2).to(torch.float64).div(real_dim))


_TABLES: "OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()
_TABLES_MAX = 64  # a stream revisits few position sets: 4 steps share a block's, sink offsets repeat


def rope_cos_sin(positions: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """positions: int64 [N, 3] -> (cos, sin): float64 [N, head_dim/2], fp32-rounded values.

    Memoised per (positions, rope split) in a small LRU: every denoising step of a block asks
    for the same noisy-token positions, and the conditioning positions repeat with the sink
    offset, so the float64 outer products / cat / cos / sin run once per distinct set. The
    returned tables are shared: treat them as read-only."""
    if positions.device.type != "cpu" or positions.dtype != torch.int64:
        return _compute(positions, cfg)
    key = (positions.numpy().tobytes(), tuple(positions.shape), cfg.rope_split)
    hit = _TABLES.get(key)
    if hit is not None:
        _TABLES.move_to_end(key)
        return hit
    hit = _TABLES[key] = _compute(positions, cfg)
    if len(_TABLES) > _TABLES_MAX:
        _TABLES.popitem(last=False)
    return hit


def _compute(positions: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    parts = []
    for axis, real_dim in enumerate(cfg.rope_split):
        parts.append(torch.outer(positions[:, axis].to(torch.float64), _inv_freq(real_dim)))
    ang = torch.cat(parts, dim=1)
    return ang.cos().float().double(), ang.sin().float().double()


def _sample(start: int, span: int, count: int) -> list[int]:
    """The published `np.linspace(start, start + span - 1, count).astype(int)` sampling."""
    return np.linspace(start, start + span - 1, count).astype(int).tolist()


def grid(ts: list[int], hs: list[int], ws: list[int]) -> torch.Tensor:
    """Cartesian product in (t, h, w) token order -> int64 [len(ts)*len(hs)*len(ws), 3]."""
    t, h, w = torch.meshgrid(torch.tensor(ts), torch.tensor(hs), torch.tensor(ws), indexing="ij")
    return torch.stack([t.flatten(), h.flatten(), w.flatten()], dim=1).long()


def noisy_positions(first_frame: int, frames: int, h: int, w: int) -> torch.Tensor:
    """Noisy tokens of a block: time first_frame .. first_frame+frames-1 on the full h x w grid."""
    return grid(list(range(first_frame, first_frame + frames)), list(range(h)), list(range(w)))


def motion_positions(h: int, w: int, buckets: tuple[int, int, int]) -> torch.Tensor:
    """Frame-packer tokens (post 1x2x2, 2x 2x4x4, 4x 4x8x8), in packing order.

    h, w: the patch grid (latent H/2, W/2). Time indices are negative: -1, -3 and
    -19,-14,-9,-4 for buckets (1, 2, 16); h/w positions are a linspace over the full grid.
    """
    b1, b2, b4 = buckets
    post = grid([-1 * b1], _sample(0, h, h), _sample(0, w, w))
    start2 = b1 + b2
    two = grid([-start2], _sample(0, h, h // 2), _sample(0, w, w // 2))
    start4 = b1 + b2 + b4
    four_t = [-t for t in np.linspace(start4, start4 - b4 + 1, b4 // 4).astype(int).tolist()]
    four = grid(four_t, _sample(0, h, h // 4), _sample(0, w, w // 4))
    return torch.cat([post, two, four])


def ref_positions(ref_time: int, h: int, w: int) -> torch.Tensor:
    """Reference latent tokens: one frame at time `ref_time` on the full grid."""
    return grid([ref_time], list(range(h)), list(range(w)))
