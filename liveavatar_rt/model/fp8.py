"""`precision="fp8"`: the DiT's linears as the published `--fp8` switch sets them.

Every `Linear` of the generator becomes an `Fp8Linear` (E4M3 weight + per-tensor scale, op
`fp8_linear`) except those whose module name contains one of `FP8_IGNORE` (the published
ignore list: text/time embeddings, the time projection, the head and the audio encoder's final
linear). The rule is the published one, a substring match on module names, which are the
published key names here.

Loaders swap the modules while the model is still on the meta device (`to_fp8`), then quantize
each weight as its tensor is read (`quantize_e4m3` through `fp8_weight_entries`), so a 14B load
never holds a bf16 copy of the model. A model with real weights can be converted in place too.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import PRECISIONS
from ..ops.fp8_linear import E4M3, quantize_e4m3
from .layers import Linear

FP8_IGNORE = ("text_embedding", "time_embedding", "time_projection", "head.head",
              "casual_audio_encoder.encoder.final_linear")


class Fp8Linear(nn.Module):
    """Keys `.weight` [out, in] E4M3, `.weight_scale` 0-d fp32 (1 / s_w), `.bias` [out] bf16.

    forward(x [..., in], dtype ignored) -> [..., out] in x's dtype, as the published layer."""

    def __init__(self, ops, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.ops, self.in_features, self.out_features = ops, in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device="meta", dtype=E4M3),
                                   requires_grad=False)
        self.weight_scale = nn.Parameter(torch.empty((), device="meta"), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, device="meta"), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        # `dtype` is what a bf16 Linear would round to; the published fp8 layer returns x's dtype.
        return self.ops.fp8_linear(x, self.weight, self.weight_scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3"


def fp8_targets(model: nn.Module, ignore=FP8_IGNORE) -> list[str]:
    """Names of the Linear modules the published switch quantizes."""
    return [n for n, m in model.named_modules() if isinstance(m, Linear) and not any(k in n for k in ignore)]


def to_fp8(model: nn.Module, ignore=FP8_IGNORE) -> nn.Module:
    """Swap the target Linears for Fp8Linear, in place. A meta-device Linear gets a meta
    Fp8Linear (a loader fills it); one with weights is quantized now (published rule)."""
    for name in fp8_targets(model, ignore):
        lin = model.get_submodule(name)
        new = Fp8Linear(lin.ops, lin.in_features, lin.out_features, bias=lin.bias is not None)
        if lin.weight.device.type != "meta":
            w8, inv = quantize_e4m3(lin.weight.detach())
            new.weight = nn.Parameter(w8, requires_grad=False)
            new.weight_scale = nn.Parameter(inv, requires_grad=False)
            if lin.bias is not None:
                new.bias = nn.Parameter(lin.bias.detach(), requires_grad=False)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return model


def fp8_weight_entries(key: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """A target's (LoRA-merged, compute-dtype) weight -> {key: E4M3 weight, key_scale: 1/s_w}."""
    w8, inv = quantize_e4m3(weight)
    return {key: w8, f"{key}_scale": inv}


def check_precision(precision: str, dtype: torch.dtype) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if precision == "fp8" and dtype != torch.bfloat16:
        raise ValueError(f"precision 'fp8' runs its other layers in bf16 (the published path); got dtype {dtype}")
