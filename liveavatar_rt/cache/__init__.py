"""Per-step rolling KV caches, the shared conditioning K/V, and a block's attend plan."""
from .kv import BlockPlan, CondCache, RingCache
from .rows import RowsAttend

__all__ = ["BlockPlan", "CondCache", "RingCache", "RowsAttend"]
