"""Training recipes (outside the runtime package liveavatar_rt)."""
