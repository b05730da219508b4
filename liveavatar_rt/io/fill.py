"""Fill a meta-device module from a stream of (key, tensor) pairs, one tensor at a time.

Shared by every loader, so a checkpoint never needs a second full copy in memory and every
loader reports problems the same way: one ValueError naming each missing key, unexpected key and
shape mismatch (tensor name and both shapes).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch


def fill_module(model: torch.nn.Module, items: Iterable[tuple[str, torch.Tensor]],
                convert: Callable[[str, torch.Tensor], torch.Tensor], what: str) -> torch.nn.Module:
    """Assign convert(key, t) to the parameter named key for each item; `what` names the
    checkpoint and the model in the error message. Returns the model in eval mode, frozen.

    convert may also return {name: tensor}: several parameters made from one checkpoint tensor
    (an FP8 weight and its scale)."""
    expected = {k: tuple(p.shape) for k, p in model.named_parameters()}
    seen, unexpected, mismatched = set(), [], []
    for key, t in items:
        shape = expected.get(key)
        if shape is None:
            unexpected.append(key)
            continue
        seen.add(key)  # present: reported as a mismatch rather than as missing
        if tuple(t.shape) != shape:
            mismatched.append(f"{key}: checkpoint {tuple(t.shape)} vs model {shape}")
            continue
        out = convert(key, t)
        for name, val in (out.items() if isinstance(out, dict) else [(key, out)]):
            if name not in expected:
                raise ValueError(f"{what}: converting {key!r} made {name!r}, which the model does not have")
            seen.add(name)
            mod_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(mod_name), attr, torch.nn.Parameter(val, requires_grad=False))
    missing = sorted(set(expected) - seen)
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing[:12]}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {sorted(unexpected)[:12]}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {mismatched[:12]}")
    if problems:
        raise ValueError(f"{what}:\n  " + "\n  ".join(problems))
    return model.eval().requires_grad_(False)
