"""Nothing grows with stream length: caches are allocated once, RSS stays flat."""
from __future__ import annotations

import os

import torch

from .conftest import block_inputs, make_stepper


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_caches_are_preallocated_and_memory_is_flat(tiny_fp32):
    st = make_stepper(tiny_fp32)
    ptrs = {i: (r.k.data_ptr(), r.v.data_ptr()) for i, r in st.rings.items()}
    noise, feats = block_inputs(tiny_fp32, 0)
    for n in range(40):  # warm-up: allocator pools reach their steady state
        st.denoise(noise, n, feats)
    before = rss_bytes()
    for n in range(40, 400):  # 400 blocks = 1200 latent frames, the ring wrapped 100 times
        st.denoise(noise, n, feats)
    grown = rss_bytes() - before
    assert grown < 8 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 360 blocks"
    assert ptrs == {i: (r.k.data_ptr(), r.v.data_ptr()) for i, r in st.rings.items()}
    assert torch.isfinite(st.rings[0].k).all()
