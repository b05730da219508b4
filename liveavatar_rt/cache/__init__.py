"""Per-step rolling KV caches and the shared conditioning K/V."""
from .kv import CondCache, RingCache

__all__ = ["CondCache", "RingCache"]
