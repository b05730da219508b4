"""liveavatar_rt: a kernel-accelerated streaming inference runtime for Live Avatar."""
__version__ = "0.1.0"
