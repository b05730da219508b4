"""The pipelined schedule: timestep-forcing pipeline parallelism (TPP) inside one process.

The published system gives each GPU one denoising step; block n's step i runs while block
n-1's step i+1 runs on the next GPU. Each step has its own ring cache, so step i of block n
needs only block n's step i-1 (done in the previous forward) and step i's ring holding the
blocks before n (written by block n-1's step i, also done before). `PipelinedExecutor` runs
that same schedule in one process as *batching*: every forward takes the next step of every
block in flight as one row of a batch (`BlockStepper.step_rows`), so the linear layers run one
GEMM of up to 4 x L tokens and the per-op overhead is paid once per forward instead of once per
block step. Steady state: one forward per block, as wide as the steps.

It batches only what is there. A forward runs when a block is submitted (the new block's
step 0 joins the blocks in flight), or when the caller asks for a result and no new block can
come yet (`take`: the blocks in flight advance, fewer rows, until the oldest is done). With
audio arriving in real time and compute faster than it, blocks go through nearly alone, at
the latency of the sequential schedule; when audio is ahead (a backlog, offline generation,
a session falling behind) the batch fills up.

Numerics: a row computes what `BlockStepper.step` computes, except that oneDNN may pick another
GEMM kernel for a taller batch (a different accumulation order: bf16 rounding noise, checked
against the published outputs in tests/golden). The sink replacement re-runs the conditioning
prefill, which every step reads: the blocks in flight finish first (a drain, once per session).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch

from .executor import BlockJob, BlockResult, SessionSpec, finish_block, open_stepper, replace_sink
from .stepper import StepRow

SCHEDULES = ("sequential", "pipelined")


def check_schedule(schedule: str) -> str:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return schedule


@dataclass
class _InFlight:
    job: BlockJob
    x: torch.Tensor  # the latent after `done` steps, [1, 16, F, h, w] compute dtype
    audio: tuple[torch.Tensor, torch.Tensor]
    cond_states: torch.Tensor
    done: int = 0  # steps taken (index into the stepper's steps)
    timings: dict = field(default_factory=dict)
    rows: list[int] = field(default_factory=list)  # batch height of each forward charged to it


class PipelinedExecutor:
    """Every step and the decode in this process, up to one block per step in flight (see the
    module docstring). Same interface and results order as LocalExecutor.

    Timings per block: audio_encoder, sink_replacement (when it happens), dit (the forwards'
    seconds: each forward is charged to the oldest block in flight, so the blocks' dit times
    add up to the DiT's wall time), rows (the mean batch height of those forwards), vae_decode."""

    def __init__(self, pipe, spec: SessionSpec):
        self.spec = spec
        self.stepper = open_stepper(pipe, spec)
        self.depth = len(self.stepper.steps)
        self.decoder = spec.cond.new_decoder() if spec.decode else None
        self._flight: deque[_InFlight] = deque()  # oldest first
        self._done: deque[BlockResult] = deque()
        self._sink: torch.Tensor | None = None

    @torch.no_grad()
    def submit(self, job: BlockJob) -> None:
        if len(self._flight) + len(self._done) >= self.depth:
            raise RuntimeError(f"PipelinedExecutor is {self.depth} blocks deep: take() a result first")
        timings: dict = {}
        if job.resink:
            if self._sink is not None or any(f.job.keep_sink for f in self._flight):
                while self._flight:  # the blocks in flight still read the old conditioning
                    self._forward()
            timings["sink_replacement"] = replace_sink(self.stepper, self._sink, self.spec, job.index)
        ops = self.stepper.model.ops
        x = job.noise.to(device=ops.device, dtype=ops.dtype)
        t = time.perf_counter()
        audio = self.stepper.audio(job.features)
        timings["audio_encoder"] = time.perf_counter() - t
        self._flight.append(_InFlight(job, x, audio, torch.zeros_like(x), timings=timings))
        self._forward()

    def ready(self) -> bool:
        """A result can be taken without another submit (done, or in flight: `take` advances)."""
        return bool(self._done or self._flight)

    @torch.no_grad()
    def take(self) -> BlockResult:
        while not self._done:
            if not self._flight:
                raise RuntimeError("no result to take")
            self._forward()
        return self._done.popleft()

    def _forward(self) -> None:
        """The next step of every block in flight, as one batch; a block past its last step
        is decoded and moves to the results."""
        steps, flight = self.stepper.steps, self._flight
        rows = [StepRow(steps[f.done], f.job.index, f.x, f.audio, f.cond_states) for f in flight]
        t = time.perf_counter()
        out = self.stepper.step_rows(rows)
        dt = time.perf_counter() - t
        oldest = flight[0]
        oldest.timings["dit"] = oldest.timings.get("dit", 0.0) + dt
        oldest.rows.append(len(rows))
        for f, (_, x) in zip(flight, out):
            f.x, f.done = x, f.done + 1
        while flight and flight[0].done == len(steps):
            self._finish(flight.popleft())

    def _finish(self, f: _InFlight) -> None:
        if f.job.keep_sink:
            self._sink = f.x[:, :, :1].clone()
        f.timings["rows"] = sum(f.rows) / len(f.rows)  # every block is charged one forward at least
        self._done.append(finish_block(f.job, f.x, self.decoder, f.timings))

    def end(self) -> None:
        """No more jobs (the blocks in flight finish on `take`)."""

    def close(self) -> None:
        self.stepper = self.decoder = None
        self._flight.clear()
        self._done.clear()
