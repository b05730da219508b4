"""Fixtures of the trained-model tests."""
from __future__ import annotations

import pytest

from liveavatar_rt.engine import Pipeline


@pytest.fixture(scope="session")
def trained_tiny():
    """The shipped trained `tiny` pipeline (fails, never skips, when the weights are missing)."""
    with pytest.MonkeyPatch.context() as mp:  # tests/serve runs on random weights via this variable
        mp.delenv("LIVEAVATAR_RT_TINY_RANDOM", raising=False)
        pipe = Pipeline.from_pretrained("tiny", quiet=True)
    if pipe.note:
        pytest.fail(f"the trained tiny model must ship (got: {pipe.note})")
    return pipe
