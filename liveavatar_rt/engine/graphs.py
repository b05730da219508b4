"""CUDA-graph replay of a stepper's owned denoising steps (`StreamConfig.cuda_graphs`).

A step's forward depends on the block only through its `BlockPlan` (cache/kv.py: the ring
slots, the RoPE tables of the block's positions and of the sink position, as tensors, and
`valid`, the number of ring tokens attended), which the eager path uses too, and a rebase
rotation. A CUDA graph replays fixed kernels on fixed addresses, so here:
- the latent, cond states, audio tokens and the plan's tensors are copied per block into
  static buffers (a static plan: the keys are written through its `slots` index tensor);
- the timestep is constant per step: its tensor is made once;
- a rebase rotation runs eagerly before the replay, while the stepper makes the plan (in place
  on the ring, same address);
- `valid` is baked into the graph: it equals the ring capacity from the block that fills the
  ring on (block `cache_frames / frames_per_block - 1`) for good, so earlier blocks run the
  eager path;
- the text and conditioning K/V are read by address. `CondCache.store` keeps their addresses
  over the sink replacement; should they change anyway (new text, another shape), the graph's
  key changes and the step is captured again.

The static formulation (`StepGraph.forward`) also runs on CPU, uncaptured (`capture=False`):
tests/engine/test_graphs.py checks there that it computes bit for bit what the eager path
computes; on CUDA the same function is what gets captured. Every `torch.cuda` call is in
`StepGraph.capture`/`StepGraphs.run` behind a CUDA-device check.
"""
from __future__ import annotations

import torch

from ..cache import BlockPlan
from .sampler import euler_step


def use_cuda_graphs(setting: bool | None, device) -> bool:
    """Resolve `StreamConfig.cuda_graphs` for a model on `device`: None -> on iff CUDA;
    True on another device -> ValueError (a forced switch that cannot work is a mistake)."""
    device = torch.device(device)
    cuda = device.type == "cuda" and torch.cuda.is_available()
    if setting is None:
        return cuda
    if setting and not cuda:
        raise ValueError(f"cuda_graphs=True needs a CUDA device, but the model runs on {device}"
                         + ("" if device.type != "cuda" else " and torch has no CUDA")
                         + "; use cuda_graphs=None (auto) or False")
    return bool(setting)


class StepGraph:
    """Static buffers of one owned step for one session shape, and its CUDA graph once captured.

    Inputs (copied per block): x, cond_states [B, 16, F, h, w]; tokens [B, F, n+1, C], glob
    [B, F, 1, C]; the block's plan (a static BlockPlan). Outputs: (velocity, next latent), both
    [B, 16, F, h, w]."""

    def __init__(self, stepper, step: int, key: tuple, x: torch.Tensor, plan: BlockPlan, audio,
                 cond_states: torch.Tensor):
        # no reference to the stepper itself: it holds this, and a cycle would keep its caches
        # alive after Session.close() until the garbage collector runs
        self.model, self.key = stepper.model, key
        self.ops, self.ring = stepper.model.ops, stepper.rings[step]
        dev = self.ring.k.device
        B, _, Fr = x.shape[:3]
        # held, not only addressed: the graph reads them, so they must outlive it
        self.text_kv = stepper.text_kv
        self.cond = stepper.cond.alias()
        self.x, self.cond_states = torch.empty_like(x), torch.empty_like(cond_states)
        self.tokens, self.glob = (torch.empty_like(a) for a in audio)
        self.plan = BlockPlan.empty_like(plan)
        self.t = stepper.timesteps[step].expand(B, Fr).contiguous().to(dev)
        self.sigma, self.sigma_next = stepper.sigmas[step], stepper.sigmas[step + 1]
        self.graph = None
        self.out: tuple[torch.Tensor, torch.Tensor] | None = None
        self.replays = 0

    def fill(self, x, plan: BlockPlan, audio, cond_states) -> None:
        """Copy one block's inputs into the static buffers (outside any captured region)."""
        self.x.copy_(x)
        self.cond_states.copy_(cond_states)
        self.tokens.copy_(audio[0])
        self.glob.copy_(audio[1])
        self.plan.copy_(plan)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The step on the static buffers: forward (writes the ring slot) + Euler update. It is
        idempotent for a block (it rewrites the same slot with the same K/V), which is what
        lets the warm-up run double as the block's result."""
        v = self.model.forward_block(self.x, self.t, self.cond_states, self.text_kv, (self.tokens, self.glob),
                                     lambda i: self.ring.attend(i, self.plan, self.cond, self.ops))
        return v, euler_step(self.x, v, self.sigma, self.sigma_next)

    def capture(self, side) -> tuple[torch.Tensor, torch.Tensor]:
        """Warm up on the side stream `side` (that run is this block's result), then capture
        there. CUDA only."""
        dev = self.x.device
        if dev.type != "cuda" or not torch.cuda.is_available():
            raise RuntimeError(f"CUDA graph capture needs a CUDA device, the step runs on {dev}")
        main = torch.cuda.current_stream(dev)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = self.forward()  # lazy per-stream state (cuBLAS workspace, Triton JIT) before capture
        main.wait_stream(side)
        for t in out:
            t.record_stream(main)  # allocated on the side stream, used and freed on the main one
        # capture_begin/end, not the torch.cuda.graph context: that one synchronises the whole
        # device first, which on a pipeline rank would wait for its preposted NCCL receives.
        # thread_local: other sessions may run CUDA work in other threads meanwhile.
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                self.out = self.forward()
            finally:
                graph.capture_end()
        self.graph = graph
        return out

    def replay(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.graph.replay()
        self.replays += 1
        return self.out


class StepGraphs:
    """The stepper's step graphs, one per owned step, built on first use and rebuilt when the
    session shape changes. `capture=False` runs the static formulation uncaptured (CPU tests)."""

    def __init__(self, device, capture: bool = True):
        dev = torch.device(device)
        if capture and not (dev.type == "cuda" and torch.cuda.is_available()):
            raise RuntimeError(f"CUDA graphs need a CUDA device, the model runs on {dev}")
        self.capture = capture
        self.graphs: dict[int, StepGraph] = {}
        self._side = None  # the capture stream, one per stepper: warm-up memory stays cached on it
        self.builds = 0  # static states built (on CUDA: captures)
        self.static_runs = 0  # steps computed by the static formulation (replayed or not)

    @staticmethod
    def _key(st, x: torch.Tensor, audio, cond_states: torch.Tensor) -> tuple:
        return (*((tuple(t.shape), t.dtype) for t in (x, cond_states, *audio)),
                id(st.text_kv), tuple(map(id, st.cond.tensors())))

    def run(self, st, step: int, x: torch.Tensor, plan: BlockPlan, audio, cond_states: torch.Tensor,
            keep_v: bool = False) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(velocity or None, next latent) of stepper `st`'s step `step` for the block `plan`
        describes (its ring full: plan.valid == capacity). Outputs are the caller's own tensors."""
        key = (*self._key(st, x, audio, cond_states), plan.valid)
        g = self.graphs.get(step)
        if g is None or g.key != key:
            self.graphs.pop(step, None)  # drops the old graph (and its memory pool) before a new capture
            g = self.graphs[step] = StepGraph(st, step, key, x, plan, audio, cond_states)
            self.builds += 1
        g.fill(x, plan, audio, cond_states)
        self.static_runs += 1
        if not self.capture:
            v, x_next = g.forward()
            return (v if keep_v else None), x_next
        if g.graph is None:
            if self._side is None:
                self._side = torch.cuda.Stream(x.device)
            v, x_next = g.capture(self._side)
            return (v if keep_v else None), x_next
        v, x_next = g.replay()
        # the static outputs are overwritten by the next replay: hand out copies
        return (v.clone() if keep_v else None), x_next.clone()
