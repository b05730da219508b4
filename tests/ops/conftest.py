"""Shared by the C++ op tests: the `ops` fixture (torch.ops.liveavatar_rt, skipping with the
load error when the extension is not built; `make test` always builds it) and seeded inputs."""
from __future__ import annotations

import pytest
import torch

from liveavatar_rt import _ext


@pytest.fixture(scope="module")
def ops():
    if not _ext.available():
        pytest.skip(f"liveavatar_rt._C not available: {_ext.load_error()}")
    return torch.ops.liveavatar_rt


def seeded_randn(*shape, seed=0, scale=3.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale
