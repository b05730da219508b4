"""GPU memory planner: per-rank weights, KV caches, activations and decoder memory of a layout,
measured from the runtime's own modules and cache allocators on the meta device."""
from .models import MEDIUM, MODELS
from .planner import make_plan
from .tracker import LiveBytes

__all__ = ["LiveBytes", "MEDIUM", "MODELS", "make_plan"]
