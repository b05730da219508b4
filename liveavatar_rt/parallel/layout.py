"""Which rank runs which denoising steps, and where the VAE lives.

    Layout.parse("4+1")  # 4 DiT ranks (steps 0 | 1 | 2 | 3) + a VAE rank 4: the published layout
    Layout.parse("2+1")  # ranks 0, 1 own steps [0, 1] and [2, 3]; rank 2 decodes
    Layout.parse("2")    # 2 DiT ranks, the VAE decodes on the last DiT rank (1)

Ranks 0..R-1 are DiT stages in step order; rank 0 is also the front (it receives the audio,
draws the noise and hands out the frames). The stage after the last DiT rank is the VAE rank.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    dit_ranks: int
    separate_vae: bool
    steps: int = 4

    def __post_init__(self) -> None:
        if self.dit_ranks < 1:
            raise ValueError(f"a layout needs at least one DiT rank, got {self.dit_ranks}")
        if self.steps % self.dit_ranks:
            raise ValueError(f"{self.dit_ranks} DiT ranks do not divide {self.steps} denoising steps "
                             f"(use 1, 2 or 4 ranks for 4 steps)")
        if self.world < 2:
            raise ValueError("layout '1' is a single process: use Pipeline.session() (or '1+1' for a VAE rank)")

    @classmethod
    def parse(cls, spec: "str | Layout", steps: int = 4) -> "Layout":
        """'R+1' (R DiT ranks + a VAE rank) or 'R' (VAE on the last DiT rank)."""
        if isinstance(spec, Layout):
            return spec
        text = str(spec).strip()
        parts = text.split("+")
        if all(p.strip().isdigit() for p in parts):
            if len(parts) == 1:
                return cls(int(parts[0]), False, steps)
            if len(parts) == 2 and int(parts[1]) == 1:
                return cls(int(parts[0]), True, steps)
        raise ValueError(f"layout {text!r}: use 'R+1' (R DiT ranks + one VAE rank, e.g. '4+1') or 'R' "
                         "(R DiT ranks, VAE on the last one, e.g. '2')")

    @property
    def world(self) -> int:
        return self.dit_ranks + int(self.separate_vae)

    @property
    def vae_rank(self) -> int:
        return self.dit_ranks if self.separate_vae else self.dit_ranks - 1

    def steps_of(self, rank: int) -> list[int]:
        """The denoising steps rank `rank` owns ([] for a separate VAE rank)."""
        if rank >= self.dit_ranks:
            return []
        k = self.steps // self.dit_ranks
        return list(range(rank * k, (rank + 1) * k))

    def is_dit(self, rank: int) -> bool:
        return rank < self.dit_ranks

    def role(self, rank: int) -> str:
        parts = [f"DiT steps {self.steps_of(rank)}"] if self.is_dit(rank) else []
        if rank == self.vae_rank:
            parts.append("VAE")
        if rank == 0:
            parts.append("front")
        return " + ".join(parts)

    def __str__(self) -> str:
        return f"{self.dit_ranks}+1" if self.separate_vae else str(self.dit_ranks)
