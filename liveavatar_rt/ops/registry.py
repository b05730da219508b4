"""One op, many providers.

An op is defined by its plain-PyTorch reference: the reference body is the meaning of the op,
the fallback, and the test oracle. Providers (C++ CPU, Triton, CUDA) register against an op
with a `supports(device, dtype)` check that returns None when usable or a reason string when
not. Resolution happens once, when a pipeline or model is built (`resolve`), never per call:
the hot path calls a plain bound function from an `OpTable`.

Autograd: the reference is differentiable by construction; a provider is only if it says so
(`differentiable=True`, e.g. one that calls differentiable torch ops). Any other provider is
wrapped so that a call which needs gradients (grad mode on and a tensor argument that requires
grad) runs the reference instead: training through a model built with the fast table gets
correct gradients, never silently wrong ones, and inference (no_grad) pays one flag check.

Forcing a provider: `LIVEAVATAR_RT_PROVIDER=ref` (reference everywhere) or
`LIVEAVATAR_RT_PROVIDER=rms_norm=cpu,attention=ref` (per op), or `resolve(force=...)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .. import envvars

SupportsFn = Callable[[torch.device, torch.dtype], Optional[str]]


@dataclass
class Provider:
    name: str
    fn: Callable
    priority: int
    supports: SupportsFn
    differentiable: bool = False


@dataclass
class Op:
    name: str
    reference: Callable
    providers: list[Provider] = field(default_factory=list)

    def register(self, name: str, fn: Callable, priority: int, supports: SupportsFn,
                 differentiable: bool = False) -> None:
        """Add a provider; higher priority wins among the providers that support a setting.
        `differentiable`: `fn` has correct gradients (else calls needing them run the reference)."""
        if name == "ref" or any(p.name == name for p in self.providers):
            raise ValueError(f"op {self.name!r}: provider {name!r} is already registered")
        if not differentiable:
            fn = _grad_safe(fn, self.reference)
        self.providers.append(Provider(name, fn, priority, supports, differentiable))
        self.providers.sort(key=lambda p: -p.priority)

    def candidates(self, device: torch.device, dtype: torch.dtype) -> list[tuple[str, Optional[str]]]:
        """(provider, refusal reason or None) for every provider, best first, then 'ref'."""
        out = [(p.name, p.supports(device, dtype)) for p in self.providers]
        return out + [("ref", None)]

    def select(self, device: torch.device, dtype: torch.dtype, force: Optional[str] = None) -> tuple[str, Callable]:
        if force is not None:
            if force == "ref":
                return "ref", self.reference
            for p in self.providers:
                if p.name == force:
                    why = p.supports(device, dtype)
                    if why is not None:
                        raise RuntimeError(f"op {self.name!r}: forced provider {force!r} refuses: {why}")
                    return p.name, p.fn
            known = [p.name for p in self.providers] + ["ref"]
            raise ValueError(f"op {self.name!r}: unknown provider {force!r} (known: {known})")
        for p in self.providers:
            if p.supports(device, dtype) is None:
                return p.name, p.fn
        return "ref", self.reference


def _needs_grad(args, kwargs) -> bool:
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            if a.requires_grad:
                return True
        elif isinstance(a, (list, tuple)) and any(isinstance(t, torch.Tensor) and t.requires_grad for t in a):
            return True
    return False


def _grad_safe(fn: Callable, reference: Callable) -> Callable:
    """`fn`, except that a call needing gradients runs `reference` (fn has no backward)."""

    def call(*args, **kwargs):
        if torch.is_grad_enabled() and _needs_grad(args, kwargs):
            return reference(*args, **kwargs)
        return fn(*args, **kwargs)

    call.__name__, call.__doc__, call.__wrapped__ = getattr(fn, "__name__", "provider"), fn.__doc__, fn
    return call


OPS: dict[str, Op] = {}


def define(name: str) -> Callable[[Callable], Callable]:
    """Decorator: declare `fn` as the reference of op `name`."""

    def deco(fn: Callable) -> Callable:
        if name in OPS:
            raise ValueError(f"op {name!r} is defined twice")
        OPS[name] = Op(name, fn)
        return fn

    return deco


def _parse_force(spec: Optional[str]) -> dict[str, str]:
    if not spec:
        return {}
    if "=" not in spec:
        return {name: spec.strip() for name in OPS}
    out = {}
    for item in spec.split(","):
        key, _, val = item.partition("=")
        if key.strip() not in OPS:
            raise ValueError(f"LIVEAVATAR_RT_PROVIDER names unknown op {key.strip()!r} (known: {sorted(OPS)})")
        out[key.strip()] = val.strip()
    return out


class OpTable:
    """The resolved ops for one (device, dtype): attributes are plain functions.

    Modules keep a reference to one shared table; `rebind` swaps the functions in place so a
    model moved to another device or forced to another provider needs no rebuild.
    """

    def __init__(self, device="cpu", dtype=torch.float32, force: Optional[str | dict] = None):
        self.rebind(device, dtype, force)

    def rebind(self, device="cpu", dtype=torch.float32, force: Optional[str | dict] = None) -> "OpTable":
        if force is None:
            force = envvars.provider()
        forced = force if isinstance(force, dict) else _parse_force(force)
        device = torch.device(device)
        self.chosen: dict[str, str] = {}
        for name, op in OPS.items():
            pname, fn = op.select(device, dtype, forced.get(name))
            setattr(self, name, fn)
            self.chosen[name] = pname
        self.device, self.dtype = device, dtype
        return self

    def __repr__(self) -> str:
        return f"OpTable({self.device}, {self.dtype}, {self.chosen})"
