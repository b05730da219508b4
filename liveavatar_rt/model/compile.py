"""`compile=True`: the DiT's transformer blocks under torch.compile (inductor: C++ on CPU,
Triton on CUDA).

What a compiled block contains: norms, modulation, residuals, the q/k/v/o and FFN projections,
the text cross-attention. What stays eager: the self-attention's cache step (`attend.raw`, a
graph break by design, model/attention.py), because its ring slots change every block. The
elementwise ops are bound to their plain-PyTorch references (COMPILE_REF_OPS): inductor fuses
those chains into a few loops, while the hand-written kernels would be opaque calls it cannot
fuse across. Shapes are static per session (dynamic=False): a new session shape compiles once.
"""
from __future__ import annotations

import torch

# elementwise / normalisation ops inductor fuses better than it can call our kernels
COMPILE_REF_OPS = ("rms_norm", "layer_norm", "modulate", "gated_residual", "gelu_tanh", "ln_modulate", "residual_norm")


def compile_forced(force) -> dict:
    """The provider choice of a compiled model: COMPILE_REF_OPS on their references, unless
    `force` (from_pretrained's force_provider: None for LIVEAVATAR_RT_PROVIDER, its string
    syntax, or {op: provider}) says otherwise for an op."""
    from .. import envvars
    from ..ops.registry import _parse_force

    if force is None:
        force = envvars.provider()

    user = force if isinstance(force, dict) else _parse_force(force)
    return {**{name: "ref" for name in COMPILE_REF_OPS}, **user}


def compile_blocks(model) -> None:
    """Compile every block's forward of `model` (CausalWanS2V) in place. The modules stay as they
    are (same state_dict keys); all blocks share one code object, so they share compiled graphs
    (their parameters are graph inputs), and a new session shape adds one graph."""
    for blk in model.blocks:
        blk.forward = torch.compile(blk.forward, dynamic=False)
