"""Tests of liveavatar_rt.audio. Shared helper: random chunkings of a signal."""
import numpy as np


def random_chunks(x, rng: np.random.Generator, sizes=(0, 1, 2, 3, 7, 64, 500, 3000), axis: int = 0):
    """Split x along `axis` into consecutive chunks with sizes drawn from `sizes` (0 allowed)."""
    out, i, n = [], 0, x.shape[axis]
    while i < n:
        s = int(rng.choice(sizes))
        out.append(np.take(x, np.arange(i, min(i + s, n)), axis=axis))
        i += s
    return out
