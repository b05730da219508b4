"""Per-rank memory of a layout from the measured figures (measure.py), and whether it fits.

What each rank holds, as the engine places work (parallel/front.py, parallel/stage.py):
- a DiT rank: the whole generator (the audio encoder inside it runs on rank 0, the front),
  one RingCache per owned step, the conditioning cache and the text K/V (one set per rank);
- the VAE rank (`Layout.vae_rank`; in layout "1" the only rank): the VAE decoder, its causal
  cache, one block's decode;
- rank 0, the front: the session's conditioning (VAE encode of the image and the 73-frame
  motion video), the text encoder (umT5, on the model's device) and the wav2vec2 audio model.
  (Today every rank loads the full pipeline - parallel/launch.py - so ranks above 0 also hold
  what only the front uses; this plan is per role.)
Activations: one step's traced peak per captured CUDA graph (each owned step's graph keeps a
private memory pool), or one when graphs are off; the prefill's transient if larger.
Transients that happen at different times are summed: the plan errs on the safe side.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..parallel.layout import Layout
from .measure import DitFigures, VaeFigures

GIB = 2**30
# Not tensors, so not traced: CUDA context, cuBLAS/cuDNN workspaces, NCCL buffers, Triton.
CONTEXT_GIB = 1.0
# Caching-allocator rounding and fragmentation, as a fraction of the traced tensor bytes.
ALLOCATOR_MARGIN = 0.10


@dataclass(frozen=True)
class Roles:
    rank: int
    steps: tuple[int, ...]
    vae: bool
    front: bool

    def describe(self) -> str:
        parts = [f"steps {','.join(map(str, self.steps))}"] if self.steps else []
        return " + ".join(parts + (["VAE"] if self.vae else []) + (["front"] if self.front else []))


def layout_roles(spec: str, steps: int = 4) -> list[Roles]:
    """'1' (one process: everything on rank 0) or a ring layout Layout.parse accepts."""
    if str(spec).strip() == "1":
        return [Roles(0, tuple(range(steps)), True, True)]
    lay = Layout.parse(spec, steps)
    return [Roles(r, tuple(lay.steps_of(r)), r == lay.vae_rank, r == 0) for r in range(lay.world)]


@dataclass(frozen=True)
class RankPlan:
    """Bytes per part of one rank; `need_gib` adds the margin and context, `fits` compares."""

    rank: int
    role: str
    dit: int
    vae: int
    encoders: int
    kv: int
    act: int
    decoder: int
    total: int
    need_gib: float
    fits: bool | None

    def as_dict(self) -> dict:
        return asdict(self)


def plan_rank(roles: Roles, dit: DitFigures, vae: VaeFigures, encoders: int, fp8_kv: bool, graphs: bool,
              gpu_gib: float | None) -> RankPlan:
    """encoders: bytes of the front-only text + audio models (0 where the model has none)."""
    n = len(roles.steps)
    w_dit = dit.weights if n else 0
    w_vae = (vae.decoder if roles.vae else 0) + (vae.encoder if roles.front else 0)
    w_enc = encoders if roles.front else 0
    ring, cond = (dit.ring_fp8, dit.cond_fp8) if fp8_kv else (dit.ring, dit.cond)
    kv = n * ring + cond + dit.text_kv if n else 0
    act = max(dit.step_peak * (n if graphs else 1), dit.prefill_peak - dit.cond) if n else 0
    dec = (vae.decode_state + vae.decode_peak if roles.vae else 0) + (vae.encode_peak if roles.front else 0)
    total = w_dit + w_vae + w_enc + kv + act + dec
    need = total * (1 + ALLOCATOR_MARGIN) / GIB + CONTEXT_GIB
    return RankPlan(roles.rank, roles.describe(), w_dit, w_vae, w_enc, kv, act, dec, total, round(need, 3),
                    None if gpu_gib is None else need <= gpu_gib)
