"""Denoise blocks with timestep-forcing caches: the engine's core loop for owned steps.

A `BlockStepper` owns the conditioning K/V and the ring caches of the denoising steps it runs
(all of them in one process; a subset on a pipeline rank). Per block: audio tokens once, then
for each owned step i: forward with cache i, Euler update. Shortcuts against the published loop
(each checked against the straightforward computation in tests): the text cross-attention K/V
and the block's audio tokens are computed once instead of once per forward, and the
conditioning prefill runs once instead of once per step cache.

CUDA graphs (`StreamConfig.cuda_graphs`, engine/graphs.py): once a step's ring is full, the
step's forward + Euler update is captured once and replayed per block; earlier blocks, and
every block on CPU, run the eager path below.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..cache import BlockPlan, CondCache, RingCache, RowsAttend
from ..config import StreamConfig
from ..model import CausalWanS2V
from ..model.rope import motion_positions, noisy_positions, ref_positions, rope_cos_sin
from .graphs import StepGraphs, use_cuda_graphs
from .positions import PositionPolicy, SinkOffsets, ref_time
from .sampler import euler_step, flow_schedule


@dataclass
class StepRow:
    """One row of a batched step (`BlockStepper.step_rows`): block `block` at denoising step
    `step`; x: its latent [1, 16, F, h, w] in the compute dtype; audio: `audio(...)` of the
    block; cond_states: [1, 16, F, h, w] (zeros when there is no pose)."""

    step: int
    block: int
    x: torch.Tensor
    audio: tuple[torch.Tensor, torch.Tensor]
    cond_states: torch.Tensor


class BlockStepper:
    def __init__(self, model: CausalWanS2V, stream: StreamConfig, latent_hw: tuple[int, int],
                 steps: list[int] | None = None, offsets: SinkOffsets | None = None, batch: int = 1,
                 positions: PositionPolicy | None = None, kv_dtype: torch.dtype | None = None):
        cfg = model.cfg
        self.model, self.stream, self.cfg = model, stream, cfg
        self.h, self.w = latent_hw
        if self.h % 8 or self.w % 8:
            raise ValueError(f"latent size {latent_hw} must be divisible by 8 (frame packer 4x8x8)")
        self.tokens_per_frame = (self.h // 2) * (self.w // 2)
        self.sigmas, self.timesteps = flow_schedule(stream.sampling_steps, stream.shift, stream.num_train_timesteps)
        self.steps = list(range(stream.sampling_steps)) if steps is None else list(steps)
        self.offsets = offsets or SinkOffsets(low=stream.sink_offset_range[0], high=stream.sink_offset_range[1])
        ops = model.ops
        cap = stream.cache_frames * self.tokens_per_frame
        # kv_dtype: None (K/V in the compute dtype, as published) or E4M3 (cache/kv.py)
        self.cond = CondCache(cfg.num_layers, kv_dtype)
        self.rings = {i: RingCache(cfg.num_layers, batch, cap, cfg.num_heads, cfg.head_dim, ops.dtype, ops.device,
                                   kv_dtype) for i in self.steps}
        self.text_kv = None
        self.positions = positions or PositionPolicy()
        self._rebased = {i: 0 for i in self.steps}  # periods already subtracted, per step cache
        self._motion_pos = motion_positions(self.h // 2, self.w // 2, cfg.zip_frame_buckets)
        self.graphs = StepGraphs(ops.device) if use_cuda_graphs(stream.cuda_graphs, ops.device) else None
        self._temb: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    # ---- session state ------------------------------------------------------------------
    def set_text(self, text: torch.Tensor) -> None:
        """text: [Lt, text_dim] encoder output for the session prompt."""
        self.text_kv = self.model.text_kv(text.to(self.model.ops.device))

    def _cond_rope(self, ref_t: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.cat([ref_positions(ref_t, self.h // 2, self.w // 2), self._motion_pos])
        return rope_cos_sin(pos, self.cfg)

    def prefill(self, ref_latent: torch.Tensor, motion: torch.Tensor) -> None:
        """ref_latent: [B, 16, 1, h, w]; motion: [B, 16, T, h, w] -> fills the conditioning K/V."""
        if self.text_kv is None:
            raise RuntimeError("set_text() must be called before prefill()")
        cos, sin = self._cond_rope(self.cfg.ref_time_index)
        ops = self.model.ops
        self.model.prefill(ref_latent.to(ops.device), motion.to(ops.device), self.text_kv,
                           lambda i: self.cond.prefill_attend(i, cos, sin, ops))

    def audio(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features: [B, layers, audio_dim, 4 * frames_per_block] for one block."""
        s = self.stream
        return self.model.audio_tokens(features.to(self.model.ops.device), s.audio_prefix_frames, s.motion_latent_frames)

    # ---- one step / one block -----------------------------------------------------------
    def plan(self, step: int, block: int, frames: int) -> BlockPlan:
        """Block `block`'s attend plan for step `step` (ring slots, RoPE tables of its positions
        and of the sink position, as tensors; cache/kv.py). Ring slots follow the absolute
        stream position. Rebases the step's ring first when the block crosses the position
        limit (an in-place rotation of the stored keys)."""
        if not self.cond.ready:
            raise RuntimeError("prefill() must run before denoising")
        f0 = block * frames
        k = self.positions.rebases(f0, frames)
        if k != self._rebased[step]:
            # keys already in the ring were rotated at the old base: move them to the new one
            shift = torch.tensor([[-(k - self._rebased[step]) * self.positions.period, 0, 0]])
            self.rings[step].rotate(*rope_cos_sin(shift, self.cfg), self.model.ops)
            self._rebased[step] = k
        fe = f0 - k * self.positions.period  # the time position the block's tokens use
        q_rope = rope_cos_sin(noisy_positions(fe, frames, self.h // 2, self.w // 2), self.cfg)
        cond_rope = self._cond_rope(ref_time(fe, self.offsets(block, step), self.cfg.ref_time_index))
        return self.rings[step].plan(f0 * self.tokens_per_frame, q_rope, cond_rope)

    def velocity(self, step: int, x: torch.Tensor, block: int, audio, cond_states: torch.Tensor) -> torch.Tensor:
        """The model output of denoising step `step` for block `block` (writes cache `step`); eager."""
        return self._velocity(step, x, self.plan(step, block, x.shape[2]), audio, cond_states)

    def time_embedding(self, step: int, batch: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`model.time_embed` of step `step`'s timestep for [batch, frames]: it depends on the
        step alone, so it is computed once per shape (the same call, so the same bits) instead of
        once per forward (fp32 linears, ~5 % of a medium forward)."""
        key = (step, batch, frames)
        hit = self._temb.get(key)
        if hit is None:
            t = self.timesteps[step].expand(batch, frames).to(self.model.ops.device)
            with torch.no_grad():
                hit = self._temb[key] = self.model.time_embed(t)
        return hit

    def _velocity(self, step: int, x: torch.Tensor, plan: BlockPlan, audio, cond_states: torch.Tensor) -> torch.Tensor:
        ring, ops = self.rings[step], self.model.ops
        t = self.timesteps[step].expand(x.shape[0], x.shape[2]).to(ops.device)
        return self.model.forward_block(x, t, cond_states, self.text_kv, audio,
                                        lambda i: ring.attend(i, plan, self.cond, ops),
                                        self.time_embedding(step, x.shape[0], x.shape[2]))

    def _step(self, step: int, x: torch.Tensor, block: int, audio, cond_states: torch.Tensor,
              keep_v: bool = False) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(velocity or None, next latent): a graph replay once the step's ring is full (the
        graph attends over the whole ring), else eager. Both run the same plan."""
        plan = self.plan(step, block, x.shape[2])
        if self.graphs is not None and plan.valid == self.rings[step].capacity:
            return self.graphs.run(self, step, x, plan, audio, cond_states, keep_v)
        v = self._velocity(step, x, plan, audio, cond_states)
        return v, euler_step(x, v, self.sigmas[step], self.sigmas[step + 1])

    def step(self, step: int, x: torch.Tensor, block: int, audio, cond_states: torch.Tensor) -> torch.Tensor:
        return self._step(step, x, block, audio, cond_states)[1]

    def step_rows(self, rows: list[StepRow]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One forward for several blocks at different steps (the pipelined schedule,
        engine/pipelined.py): the rows' latents form one batch, so the linear layers run one
        GEMM of B*L tokens instead of B of L; each row writes and reads its own step's ring with
        its own plan (cache/rows.py), exactly as `step` would. Steps must be distinct and owned
        here. -> (velocity, next latent) per row, in row order, each [1, 16, F, h, w]. Eager, no
        CUDA graphs; one row is exactly `step`."""
        if not rows:
            raise ValueError("step_rows needs at least one row")
        steps = [r.step for r in rows]
        if len(set(steps)) != len(steps):
            raise ValueError(f"rows must be at distinct steps (one ring each), got steps {steps}")
        foreign = [i for i in steps if i not in self.rings]
        if foreign:
            raise ValueError(f"steps {foreign} are not owned by this stepper (owns {self.steps})")
        Fr = rows[0].x.shape[2]
        plans = [self.plan(r.step, r.block, Fr) for r in rows]
        if len(rows) == 1:
            r = rows[0]
            v = self._velocity(r.step, r.x, plans[0], r.audio, r.cond_states)
        else:
            ops = self.model.ops
            x = torch.cat([r.x for r in rows])
            t = torch.cat([self.timesteps[r.step].expand(1, Fr) for r in rows]).to(ops.device)
            audio = tuple(torch.cat(parts) for parts in zip(*(r.audio for r in rows)))
            cond_states = torch.cat([r.cond_states for r in rows])
            temb = tuple(torch.cat(parts) for parts in zip(*(self.time_embedding(r.step, 1, Fr) for r in rows)))
            v = self.model.forward_block(
                x, t, cond_states, self.text_kv, audio,
                lambda i: RowsAttend([self.rings[r.step].attend(i, p, self.cond, ops) for r, p in zip(rows, plans)]),
                temb)
        return [(v[j:j + 1], euler_step(r.x, v[j:j + 1], self.sigmas[r.step], self.sigmas[r.step + 1]))
                for j, r in enumerate(rows)]

    def denoise(self, noise: torch.Tensor, block: int, features: torch.Tensor,
                cond_states: torch.Tensor | None = None, trace: list | None = None,
                timings: dict | None = None) -> torch.Tensor:
        """noise: [B, 16, F, h, w] -> clean latent after all owned steps, in order.
        `trace`, if given, receives (velocity, latent) after every step; `timings`, if given,
        gets seconds per stage ('audio', 'step0', 'step1', ...)."""
        ops = self.model.ops
        x = noise.to(device=ops.device, dtype=ops.dtype)
        cond_states = torch.zeros_like(x) if cond_states is None else cond_states.to(x)
        t0 = time.perf_counter()
        audio = self.audio(features)
        if timings is not None:
            timings["audio_encoder"] = time.perf_counter() - t0
        for i in self.steps:
            t0 = time.perf_counter()
            v, x = self._step(i, x, block, audio, cond_states, keep_v=trace is not None)
            if timings is not None:
                timings[f"step{i}"] = time.perf_counter() - t0
            if trace is not None:
                trace.append((v, x))
        return x
