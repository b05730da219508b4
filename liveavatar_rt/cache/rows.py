"""Attend for a batch whose rows are different (step, block) pairs: the pipelined schedule.

The pipelined schedule (engine/pipelined.py) runs the next denoising step of every block in
flight as one batched forward: row r is block n_r at step s_r, and must read and write step
s_r's ring with block n_r's plan, exactly as it would alone. The projections, norms and FFN
run on the whole batch; only the cache step is per row, so `RowsAttend` hands each row's
q/k/v ([1, L, ...] views of the batch) to that row's own ring attend and stacks the outputs.
"""
from __future__ import annotations

import torch


class RowsAttend:
    """One layer's attend for a batch of rows; `attends[r]` is row r's (cache/kv.py
    `RingCache.attend(...)`). Both attend forms of model/attention.py, row by row."""

    def __init__(self, attends: list):
        if not attends:
            raise ValueError("RowsAttend needs at least one row")
        self.attends = attends

    def _check(self, q: torch.Tensor) -> None:
        if q.shape[0] != len(self.attends):
            raise ValueError(f"batch of {q.shape[0]} rows for {len(self.attends)} row attends")

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k (normed, not rotated), v: [B, L, H, D] -> [B, L, H, D]."""
        self._check(q)
        return torch.cat([a(q[r:r + 1], k[r:r + 1], v[r:r + 1]) for r, a in enumerate(self.attends)])

    def raw(self, q, k, v, wq, wk, eps: float, num_heads: int) -> torch.Tensor:
        """q, k: [B, L, C] before the norms; v: [B, L, H, D] -> [B, L, H, D]."""
        self._check(q)
        return torch.cat([a.raw(q[r:r + 1], k[r:r + 1], v[r:r + 1], wq, wk, eps, num_heads)
                          for r, a in enumerate(self.attends)])
