"""CUDA-graph replay of a stepper's owned denoising steps (`StreamConfig.cuda_graphs`).

A step's forward depends on the block only through a few Python values
(`BlockStepper.block_inputs`): the ring slot (from the absolute stream position), the RoPE
tables of the block's positions and of the sink position, a rebase rotation, and `valid`, the
number of ring tokens attended. A CUDA graph replays fixed kernels on fixed addresses, so here:
- the latent, cond states, audio tokens and both RoPE tables are copied per block into static
  buffers, and the ring slot becomes an int64 index tensor used by `index_copy_`;
- the timestep is constant per step: its tensor is made once;
- a rebase rotation runs eagerly before the replay (in place on the ring, same address);
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


class _StaticAttend:
    """RingCache attend of one layer whose per-block inputs are tensors (see RingCache.attend):
    normalise + rotate q/k with the static tables, write the block's K/V at the static slot
    indices, attend over the whole ring (`valid` fixed at capture) and the conditioning keys
    rotated with the static sink tables. Only the fused `raw` form, the one SelfAttention uses."""

    def __init__(self, g: "StepGraph", layer: int):
        self.g, self.layer = g, layer

    def raw(self, q, k, v, wq, wk, eps: float, num_heads: int) -> torch.Tensor:
        g, i = self.g, self.layer
        q_rot, k_rot, _ = g.ops.qk_norm_rope(q, k, wq, wk, eps, g.q_cos, g.q_sin, num_heads)
        ring_k, ring_v = g.ring.layer(i)
        ring_k.index_copy_(1, g.slots, k_rot)
        ring_v.index_copy_(1, g.slots, v)
        return g.ops.rolling_attention(q_rot, ring_k, ring_v, g.valid, g.cond_k[i], g.cond_v[i], g.c_cos, g.c_sin)


class StepGraph:
    """Static buffers of one owned step for one session shape, and its CUDA graph once captured.

    Inputs (copied per block): x, cond_states [B, 16, F, h, w]; tokens [B, F, n+1, C], glob
    [B, F, 1, C]; q_cos/q_sin fp32 [F*S, D/2]; c_cos/c_sin fp32 [Lc, D/2]; slots int64 [F*S].
    Outputs: (velocity, next latent), both [B, 16, F, h, w]."""

    def __init__(self, stepper, step: int, key: tuple, x: torch.Tensor, audio, cond_states: torch.Tensor,
                 valid: int):
        # no reference to the stepper itself: it holds this, and a cycle would keep its caches
        # alive after Session.close() until the garbage collector runs
        self.model, self.key, self.valid = stepper.model, key, valid
        self.ops, self.ring = stepper.model.ops, stepper.rings[step]
        dev = self.ring.k.device
        B, _, Fr = x.shape[:3]
        n, half = Fr * stepper.tokens_per_frame, stepper.cfg.head_dim // 2
        # held, not only addressed: the graph reads them, so they must outlive it
        self.text_kv = stepper.text_kv
        self.cond_k, self.cond_v = list(stepper.cond.k), list(stepper.cond.v)
        self.x, self.cond_states = torch.empty_like(x), torch.empty_like(cond_states)
        self.tokens, self.glob = (torch.empty_like(a) for a in audio)
        self.q_cos, self.q_sin = (torch.empty(n, half, dtype=torch.float32, device=dev) for _ in range(2))
        lc = self.cond_k[0].shape[1]
        self.c_cos, self.c_sin = (torch.empty(lc, half, dtype=torch.float32, device=dev) for _ in range(2))
        self.slots = torch.empty(n, dtype=torch.int64, device=dev)
        # the ring's possible slot ranges (capacity is a multiple of n): a device-side copy per block
        self._slot_rows = torch.arange(self.ring.capacity, device=dev).view(-1, n)
        self.t = stepper.timesteps[step].expand(B, Fr).contiguous().to(dev)
        self.sigma, self.sigma_next = stepper.sigmas[step], stepper.sigmas[step + 1]
        self.graph = None
        self.out: tuple[torch.Tensor, torch.Tensor] | None = None
        self.replays = 0

    def fill(self, x, audio, cond_states, start: int, q_rope, cond_rope) -> None:
        """Copy one block's inputs into the static buffers (outside any captured region)."""
        self.x.copy_(x)
        self.cond_states.copy_(cond_states)
        self.tokens.copy_(audio[0])
        self.glob.copy_(audio[1])
        self.q_cos.copy_(q_rope[0])  # float64 tables of fp32-rounded values: exact in fp32
        self.q_sin.copy_(q_rope[1])
        self.c_cos.copy_(cond_rope[0])
        self.c_sin.copy_(cond_rope[1])
        self.slots.copy_(self._slot_rows[(start % self.ring.capacity) // self.slots.numel()])

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The step on the static buffers: forward (writes the ring slot) + Euler update. It is
        idempotent for a block (it rewrites the same slot with the same K/V), which is what
        lets the warm-up run double as the block's result."""
        v = self.model.forward_block(self.x, self.t, self.cond_states, self.text_kv, (self.tokens, self.glob),
                                        lambda i: _StaticAttend(self, i))
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
                id(st.text_kv), tuple(map(id, st.cond.k)), tuple(map(id, st.cond.v)))

    def run(self, st, step: int, x: torch.Tensor, block: int, audio, cond_states: torch.Tensor,
            keep_v: bool = False) -> tuple[torch.Tensor | None, torch.Tensor] | None:
        """(velocity or None, next latent) of stepper `st`'s step `step` for `block`, or None
        while the step's ring is not yet full (the caller runs the eager path). Outputs are the
        caller's own tensors."""
        Fr, ring = x.shape[2], st.rings[step]
        n = Fr * st.tokens_per_frame
        _, valid = ring.window(st.ring_start(block, Fr), n)
        if valid != ring.capacity:
            return None
        start, q_rope, cond_rope = st.block_inputs(step, block, Fr)
        key = self._key(st, x, audio, cond_states)
        g = self.graphs.get(step)
        if g is None or g.key != key:
            self.graphs.pop(step, None)  # drops the old graph (and its memory pool) before a new capture
            g = self.graphs[step] = StepGraph(st, step, key, x, audio, cond_states, valid)
            self.builds += 1
        g.fill(x, audio, cond_states, start, q_rope, cond_rope)
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
