"""Where each token sits in time: block frames, the rolling reference sink, the sink offset.

Published rule (SPEC 4): block n's noisy latent frames are at 3n..3n+2; each forward draws an
offset d in [4, 30]; the reference sits at 30 + max(0, f - (30 - d)) with f = 3n; motion tokens
keep their fixed negative positions. The published code draws d from an unseeded RNG; here d is
a pure function of (seed, block, step), so any execution order (single process or a pipeline
ring) sees the same offsets.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import ModelConfig


def _mix(x: int) -> int:
    """splitmix64 finaliser: a well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


@dataclass(frozen=True)
class SinkOffsets:
    """The sink offset d for (block, step): seeded, or one fixed value (`fixed`)."""

    seed: int = 0
    low: int = 4
    high: int = 30
    fixed: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high:
            raise ValueError(f"sink offset range [{self.low}, {self.high}] is empty")
        if self.fixed is not None and not self.low <= self.fixed <= self.high:
            raise ValueError(f"fixed sink offset {self.fixed} is outside [{self.low}, {self.high}]")

    def __call__(self, block: int, step: int) -> int:
        if self.fixed is not None:
            return self.fixed
        h = _mix(_mix(_mix(self.seed) ^ block) ^ (step + 0x5BD1E995))
        return self.low + h % (self.high - self.low + 1)


def ref_time(first_frame: int, offset: int, ref_index: int = 30) -> int:
    """Time position of the reference latent for a block starting at latent frame `first_frame`."""
    return ref_index + max(0, first_frame - (ref_index - offset))


@dataclass(frozen=True)
class PositionPolicy:
    """Maps a block's absolute first latent frame to the time position its tokens use.

    `official`: positions are absolute, as published; the published RoPE table has `limit`
    entries (default `ModelConfig.rope_table_len`, 45000: the one source of that length), so a
    block reaching it raises (~2 h of video at 25 fps).
    `bounded` (default): identical to `official` until a block would reach `limit`; from then
    on positions are rebased by whole `period`s so they stay in [limit - period, limit). RoPE
    only sees differences between the noisy, cached and reference positions, and all of those
    are shifted together (the ring cache's stored keys are re-rotated by -period at each
    rebase), so attention between them is unchanged up to rounding. The motion tokens keep their
    fixed negative positions; at a rebase they move `period` frames closer but stay more than
    limit - period frames away, where the published model sees them at ever larger distances.
    """

    mode: str = "bounded"
    limit: int = ModelConfig.rope_table_len
    period: int = 30000  # rebase step of `bounded` (a runtime choice, not a model property)

    def __post_init__(self) -> None:
        if self.mode not in ("bounded", "official"):
            raise ValueError(f"position mode {self.mode!r}: use 'bounded' or 'official'")
        if not 0 < self.period < self.limit:
            raise ValueError(f"rebase period {self.period} must be in (0, limit={self.limit})")

    def rebases(self, first_frame: int, frames: int) -> int:
        """How many periods are subtracted for a block [first_frame, first_frame + frames)."""
        over = first_frame + frames - self.limit
        if over <= 0:
            return 0
        if self.mode == "official":
            raise OverflowError(f"block at latent frame {first_frame} passes the published RoPE table "
                                f"({self.limit} positions, ~{self.limit * 4 // 25 // 60} min of video); "
                                "use the 'bounded' position mode for unlimited length")
        return -(-over // self.period)

    def frame_position(self, first_frame: int, frames: int) -> int:
        return first_frame - self.rebases(first_frame, frames) * self.period
