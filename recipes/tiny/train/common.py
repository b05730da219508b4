"""Shared plumbing of the tiny-model training stages: run folders, resumable checkpoints,
CSV loss logs with a plot, a wall-clock budget and a progress bar.

Every stage is `python -m recipes.tiny.train.<stage> --run runs/tiny ...`; it writes
`<run>/<stage>/{ckpt.pt, log.csv, loss.png}` and resumes from `ckpt.pt` when it exists.
"""
from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

# One thread unless told otherwise: these small ops are overhead-bound, and on a shared 2-core
# machine a second OpenMP thread spin-waits behind other processes (measured: 0.33 s/step with
# 1 thread, 0.9-11 s with 2 under load). Set before torch starts its pool.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def stage_dir(run: str | Path, stage: str) -> Path:
    d = Path(run) / stage
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_ckpt(path: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer | None = None, **extra) -> None:
    """Atomic: written to a temp file, then renamed, so an interrupted save never corrupts a run."""
    state = {"step": step, "model": model.state_dict(), **extra}
    if opt is not None:
        state["opt"] = opt.state_dict()
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_ckpt(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer | None = None) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    if opt is not None and "opt" in state:
        opt.load_state_dict(state["opt"])
    return state


def cosine_lr(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


class LossLog:
    """Appends rows to `log.csv`; `plot()` draws every column against the step into `loss.png`."""

    def __init__(self, folder: Path, columns: list[str]):
        self.path, self.columns = folder / "log.csv", ["step", "seconds", *columns]
        self.png = folder / "loss.png"
        if not self.path.exists():
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.columns)
        self.t0 = time.time()

    def write(self, step: int, **values: float) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([step, f"{time.time() - self.t0:.1f}", *(f"{values[c]:.6g}" for c in self.columns[2:])])

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with self.path.open() as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return
        cols = self.columns[2:]
        fig, axes = plt.subplots(len(cols), 1, figsize=(7, 2.4 * len(cols)), squeeze=False)
        steps = [int(r["step"]) for r in rows]
        for ax, c in zip(axes[:, 0], cols):
            vals = [float(r[c]) for r in rows]
            ax.plot(steps, vals, lw=0.6, alpha=0.4)
            k = max(1, len(vals) // 50)  # running mean for the trend
            sm = [sum(vals[max(0, i - k):i + 1]) / len(vals[max(0, i - k):i + 1]) for i in range(len(vals))]
            ax.plot(steps, sm, lw=1.5)
            ax.set_ylabel(c)
            ax.set_yscale("log" if min(vals) > 0 else "linear")
        axes[-1, 0].set_xlabel("step")
        fig.tight_layout()
        fig.savefig(self.png, dpi=90)
        plt.close(fig)


class Budget:
    """Stop a stage after `steps` steps or `minutes` of wall time, whichever comes first."""

    def __init__(self, steps: int, minutes: float | None):
        self.steps, self.deadline = steps, (time.time() + 60 * minutes) if minutes else None

    def done(self, step: int) -> bool:
        return step >= self.steps or (self.deadline is not None and time.time() > self.deadline)


def optimize(opt: torch.optim.Optimizer, loss: torch.Tensor, params, clip: float = 1.0) -> None:
    """One update: zero the grads, backprop `loss`, clip the global grad norm of `params`, step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()


class Progress:
    """A stage's step bookkeeping: the progress bar, a log row every `log_every` steps, and a
    checkpoint (`save(step, **extra)`) with a fresh loss plot every `ckpt_every` steps and at
    the end."""

    def __init__(self, desc: str, total: int, step: int, log: LossLog, save: Callable[..., None],
                 log_every: int = 10, ckpt_every: int = 200):
        self.bar = tqdm(total=total, initial=step, desc=desc, dynamic_ncols=True)
        self.log, self.save, self.log_every, self.ckpt_every = log, save, log_every, ckpt_every

    def tick(self, step: int, shown: dict, **logged: float) -> None:
        """After step `step`: `shown` goes on the bar, `logged` into the CSV log."""
        self.bar.update(1)
        self.bar.set_postfix(**shown)
        if step % self.log_every == 0:
            self.log.write(step, **logged)
        if step % self.ckpt_every == 0:
            self.save(step)
            self.log.plot()

    def close(self, step: int, **extra) -> None:
        self.bar.close()
        self.save(step, **extra)
        self.log.plot()
