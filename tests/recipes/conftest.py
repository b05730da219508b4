"""Shared fixtures for the data-generator tests: a few short clips, made once per session."""
import pytest

from recipes.tiny.clips import make_clip

# Seeds picked for variety (checked in test_clips: hats, glasses, dark and light skin, several
# hair styles and backgrounds). 2 s clips keep the suite fast.
SEEDS = (0, 1, 2, 3, 26, 29)
SECONDS = 2.0


@pytest.fixture(scope="session")
def clips():
    return {s: make_clip(s, size=128, seconds=SECONDS) for s in SEEDS}
