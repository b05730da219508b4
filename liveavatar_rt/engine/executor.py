"""Block executors: where a Session's blocks are computed.

A `Session` (session.py) owns every rule the published model fixes (audio stream, noise per
clip, sink-replacement schedule, stream start, PCM cut) and turns each block into a `BlockJob`:
plain data. An executor runs jobs in submission order and hands back `BlockResult`s in the same
order:

    ex.submit(job)              # at most `ex.depth` jobs not yet taken
    if ex.ready(): r = ex.take()  # the oldest result (or the executor's failure, raised)
    ex.end(); ex.close()

`LocalExecutor` (here): the stepper and the streaming decoder in this process, one block deep
(submit computes). `RingExecutor` (parallel/front.py): the same work spread over TPP ranks, up
to `max_ahead` blocks deep. Both open from a `SessionSpec`, which is data too (it is what the
ring sends every rank as the session header and payload).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .positions import PositionPolicy, SinkOffsets
from .stepper import BlockStepper


@dataclass(frozen=True)
class SessionSpec:
    """What an executor needs to open a session. Latents are in the compute dtype.

    text [Lt, text_dim]; ref_latent [1, 16, 1, h, w]; motion [1, 16, T, h, w]; height, width:
    the video size; cond: the per-image conditioning (its warmed decoder), None on workers."""

    seed: int
    height: int
    width: int
    text: torch.Tensor
    ref_latent: torch.Tensor
    motion: torch.Tensor
    positions: PositionPolicy
    sink_offset: int | None
    decode: bool
    cond: object = None

    @property
    def latent_hw(self) -> tuple[int, int]:
        return tuple(self.ref_latent.shape[-2:])

    def sink_offsets(self, stream) -> SinkOffsets:
        return SinkOffsets(seed=self.seed, low=stream.sink_offset_range[0], high=stream.sink_offset_range[1],
                           fixed=self.sink_offset)


@dataclass
class BlockJob:
    """One block to denoise. noise: [1, 16, F, h, w]; features: [1, layers, audio_dim, 4F]
    (the block's audio features). keep_sink: keep the first latent frame of this block's clean
    latent as the sink; resink: before this block, re-run the conditioning prefill with the
    kept sink as the reference (the published sink replacement)."""

    index: int
    noise: torch.Tensor
    features: torch.Tensor
    keep_sink: bool = False
    resink: bool = False


@dataclass
class BlockResult:
    """latent: the clean block latent [1, 16, F, h, w]; frames: the streaming decoder's uint8
    frames [4F, H, W, 3], or None when the session does not decode."""

    index: int
    latent: torch.Tensor
    frames: torch.Tensor | None
    timings: dict = field(default_factory=dict)


def open_stepper(pipe, spec: SessionSpec, steps: list[int] | None = None) -> BlockStepper:
    """A stepper for the session's denoising steps `steps` (None: all), text set and the
    conditioning prefilled: how every executor (and every ring rank) starts a session."""
    st = BlockStepper(pipe.model, pipe.stream, spec.latent_hw, steps=steps, positions=spec.positions,
                      offsets=spec.sink_offsets(pipe.stream), kv_dtype=pipe.kv_dtype)
    st.set_text(spec.text)
    st.prefill(spec.ref_latent, spec.motion)
    return st


def replace_sink(stepper: BlockStepper, sink: torch.Tensor | None, spec: SessionSpec, index: int) -> float:
    """The published sink replacement before block `index`: the conditioning prefill again with
    the kept sink as the reference. -> seconds it took."""
    if sink is None:
        raise RuntimeError(f"block {index} asks for the sink replacement, but no block kept a sink")
    t = time.perf_counter()
    stepper.prefill(sink, spec.motion)
    return time.perf_counter() - t


def finish_block(job: BlockJob, latent: torch.Tensor, decoder, timings: dict) -> BlockResult:
    """A block's result: its clean latent and, with a decoder, its uint8 frames (timed)."""
    frames = None
    if decoder is not None:
        t = time.perf_counter()
        frames = to_uint8(decoder.decode(latent[0].float()))
        timings["vae_decode"] = time.perf_counter() - t
    return BlockResult(job.index, latent, frames, timings)


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """Decoded video [3, T, H, W] in [-1, 1] -> uint8 frames [T, H, W, 3]."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0)


class LocalExecutor:
    """Every step and the decode in this process; `submit` computes the block."""

    depth = 1

    def __init__(self, pipe, spec: SessionSpec):
        self.spec = spec
        self.stepper = open_stepper(pipe, spec)
        self.decoder = spec.cond.new_decoder() if spec.decode else None
        self._sink: torch.Tensor | None = None
        self._out: BlockResult | None = None

    @torch.no_grad()
    def submit(self, job: BlockJob) -> None:
        if self._out is not None:
            raise RuntimeError("LocalExecutor is one block deep: take() the last result first")
        timings: dict = {}
        if job.resink:
            timings["sink_replacement"] = replace_sink(self.stepper, self._sink, self.spec, job.index)
        latent = self.stepper.denoise(job.noise, job.index, job.features, timings=timings)
        if job.keep_sink:
            self._sink = latent[:, :, :1].clone()
        self._out = finish_block(job, latent, self.decoder, timings)

    def ready(self) -> bool:
        return self._out is not None

    def take(self) -> BlockResult:
        out, self._out = self._out, None
        if out is None:
            raise RuntimeError("no result to take")
        return out

    def end(self) -> None:
        """No more jobs."""

    def close(self) -> None:
        self.stepper = self.decoder = self._out = None  # drop the caches now, not at garbage collection
