"""Live-bytes tracking of tensors allocated while a region runs, on any device (meta included).

    with LiveBytes() as lb:
        y = model(x)
    lb.peak   # bytes: the most that tensors created in the region held at once
    lb.live   # bytes still held by them now (what the region retained: caches, outputs);
              # it keeps falling as those tensors die after the block, so read it right away

A `TorchDispatchMode` sees every aten op; each output whose storage it has not seen and that
is not an input's storage is a new allocation, counted at its storage's size and released by
a weakref finalizer when that storage dies. Storages that existed before the region (weights,
caches, inputs) are never counted, so `peak` is the region's working memory above what was
already there. On the meta device storages have sizes but no data, so a meta run of the real
code gives the same figures a real run would, for the same ops (allocator rounding and
kernel-internal scratch are not seen: neither is a tensor).
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _storages(tree) -> list[torch.UntypedStorage]:
    return [t.untyped_storage() for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class LiveBytes(TorchDispatchMode):
    """Tracks the bytes of storages created by aten ops inside the `with` block. device: count
    only storages there (the planner's meta runs pass "meta": host-side tensors, such as the
    memoised RoPE tables model/rope.py computes on the CPU, are not GPU memory)."""

    def __init__(self, device: str | torch.device | None = None):
        super().__init__()
        self.device = None if device is None else torch.device(device)
        self.live = 0
        self.peak = 0
        # id(storage) -> its size; a finalizer per storage removes it (ids are reused only after)
        self._sizes: dict[int, int] = {}

    def _release(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen_in = {id(s) for s in _storages((args, kwargs))}
        for st in _storages(out):
            key = id(st)
            # An output on an input's storage is a view or an in-place result: no new bytes.
            if key in seen_in or key in self._sizes or (self.device is not None and st.device != self.device):
                continue
            self._sizes[key] = st.nbytes()
            weakref.finalize(st, self._release, key)
            self.live += self._sizes[key]
            self.peak = max(self.peak, self.live)
        return out
