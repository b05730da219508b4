"""Live Avatar LoRA: parse PEFT-form keys and merge into base weights.

Keys look like `[base_model.model.]<module>.lora_A[.default].weight` ([r, in]) and
`...lora_B[.default].weight` ([out, r]). The merge is PEFT's merge_and_unload with fp32
adapters: W_new = W.dtype(fp32(W) + fp32((B_fp32 @ A_fp32) * scale)), scale = alpha / rank
(published: 64 / 128 = 0.5).
"""
from __future__ import annotations

import re

import torch

_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


def parse_lora(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """-> {target weight key (`<module>.weight`): (A [r, in], B [out, r])}. Raises on stray keys."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in state.items():
        m = _KEY.match(key)
        if m is None:
            raise ValueError(f"LoRA key {key!r} is not of the form '<module>.lora_A|lora_B[.default].weight'")
        parts.setdefault(m["module"] + ".weight", {})[m["ab"]] = t
    out = {}
    for target, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"LoRA for {target!r} has only lora_{''.join(ab)}; both lora_A and lora_B are needed")
        a, b = ab["A"], ab["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"LoRA for {target!r}: A {tuple(a.shape)} and B {tuple(b.shape)} do not chain")
        out[target] = (a, b)
    return out


def merge_lora_weight(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float, name: str = "") -> torch.Tensor:
    """weight: [out, in]; a: [r, in]; b: [out, r] -> merged weight in weight's dtype."""
    if weight.shape != (b.shape[0], a.shape[1]):
        raise ValueError(f"LoRA for {name!r}: B@A is {(b.shape[0], a.shape[1])} but the weight is {tuple(weight.shape)}")
    delta = (b.float() @ a.float()) * scale
    return (weight.float() + delta).to(weight.dtype)
