"""liveavatar_rt: a kernel-accelerated streaming inference runtime for Live Avatar."""
__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: `import liveavatar_rt` stays light (no model code imported until used).
    if name in ("Pipeline", "Session", "Video"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'liveavatar_rt' has no attribute {name!r}")
