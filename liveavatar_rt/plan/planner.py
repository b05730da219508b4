"""The memory plan of a model at a frame size on a layout: `make_plan(...)` -> a dict.

    make_plan("s2v-14b", "4+1", precision="fp8", kv_cache="fp8", size="384x704", gpu_mem=32)

Figures (measure.py) are computed once per (model, precision, size) on the meta device with
the footprint op table (footprint.py) and reused for every layout.
"""
from __future__ import annotations

import functools
from dataclasses import asdict

import torch

from ..config import PRECISIONS, StreamConfig
from .footprint import footprint_ops
from .measure import DitFigures, VaeFigures, dit_figures, vae_figures
from .models import meta_dit, meta_text_encoder, meta_vae, meta_wav2vec, model_spec, module_bytes, parse_size
from .ranks import ALLOCATOR_MARGIN, CONTEXT_GIB, layout_roles, plan_rank

KV_CACHES = ("bf16", "fp8")
DTYPE = torch.bfloat16  # the published compute dtype; fp8 runs its other layers in it too


@functools.lru_cache(maxsize=16)
def figures(model: str, precision: str, size: tuple[int, int]) -> tuple[DitFigures, VaeFigures, dict[str, int]]:
    """(DiT figures, VAE figures, {encoder name: weight bytes}) measured on meta."""
    spec = model_spec(model)
    stream = StreamConfig()
    ops = footprint_ops("meta", DTYPE)
    dit = dit_figures(meta_dit(spec.dit, precision, ops), stream, (size[0] // 8, size[1] // 8))
    vae = vae_figures(meta_vae(spec.vae, ops), stream, size)
    enc: dict[str, int] = {}
    if spec.text is not None:
        enc["umt5"] = module_bytes(meta_text_encoder(spec.text, ops))
    if spec.wav2vec:
        w2v = meta_wav2vec(DTYPE)
        enc["wav2vec2"] = module_bytes(w2v) if w2v is not None else 0  # 0: transformers missing
    return dit, vae, enc


def make_plan(model: str, layout: str, precision: str = "bf16", kv_cache: str = "bf16", size: str | None = None,
              gpu_mem: float | None = None, cuda_graphs: bool = True, text_encoder: str = "gpu") -> dict:
    """The plan as a dict: inputs, assumptions, per-rank rows (bytes; need_gib; fits).
    text_encoder: 'gpu' (the runtime loads umT5 on the model's device) or 'cpu' (not counted)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {PRECISIONS}")
    if kv_cache not in KV_CACHES:
        raise ValueError(f"kv cache {kv_cache!r}: use one of {KV_CACHES}")
    if text_encoder not in ("gpu", "cpu"):
        raise ValueError(f"text encoder {text_encoder!r}: use 'gpu' or 'cpu'")
    spec = model_spec(model)
    hw = parse_size(size, spec.size)
    roles = layout_roles(layout)  # bad layouts raise here, before any measuring
    dit, vae, enc = figures(model, precision, hw)
    on_front = sum(b for name, b in enc.items() if name != "umt5" or text_encoder == "gpu")
    rows = [plan_rank(r, dit, vae, on_front, kv_cache == "fp8", cuda_graphs, gpu_mem) for r in roles]
    notes = [f"need = total x {1 + ALLOCATOR_MARGIN:.2f} (allocator margin) + {CONTEXT_GIB:g} GiB "
             "(CUDA context, library workspaces, NCCL: not tensors)",
             "activations: traced peak of one step on the meta device (fused attention / fp8 GEMM "
             f"as their GPU kernels' outputs), x{'owned steps (one CUDA graph pool each)' if cuda_graphs else '1'}"]
    if kv_cache == "fp8":
        notes.append("kv fp8: E4M3 + one fp32 scale per token per head, as kv_cache_dtype='fp8' allocates it")
    if enc.get("wav2vec2") == 0:
        notes.append("wav2vec2 not counted: the optional package transformers is not installed")
    return {
        "model": model, "layout": str(layout), "precision": precision, "kv_cache": kv_cache,
        "size": list(hw), "gpu_mem_gib": gpu_mem,
        "cuda_graphs": cuda_graphs, "text_encoder": text_encoder,
        "margin": {"allocator_fraction": ALLOCATOR_MARGIN, "context_gib": CONTEXT_GIB},
        "figures": {"dit": asdict(dit), "vae": asdict(vae), "encoders": enc},
        "ranks": [r.as_dict() for r in rows], "notes": notes,
    }
