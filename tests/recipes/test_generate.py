"""generate CLI: files + index, resumable, byte-identical from a seed; ClipDataset."""
import json

import numpy as np
import pytest

from recipes.tiny.clips import HELDOUT_START
from recipes.tiny.dataset import ClipDataset
from recipes.tiny.generate import generate, main


def _run(out, workers):
    main(["--out", str(out), "--clips", "3", "--seconds", "0.8", "--size", "64",
          "--workers", str(workers), "--seed", "40", "--quiet"])


def test_generate_resume_and_determinism(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _run(a, 1)
    files = sorted(p.name for p in a.glob("*.npz"))
    assert files == ["clip_0000040.npz", "clip_0000041.npz", "clip_0000042.npz"]
    index = json.loads((a / "index.json").read_text())
    assert [c["seed"] for c in index["clips"]] == [40, 41, 42]
    assert index["fps"] == 25 and index["sample_rate"] == 16000 and index["size"] == 64
    # resumable: existing files are kept as they are, missing ones are made
    stamps = {p.name: p.stat().st_mtime_ns for p in a.glob("*.npz")}
    (a / "clip_0000041.npz").unlink()
    _run(a, 1)
    assert (a / "clip_0000040.npz").stat().st_mtime_ns == stamps["clip_0000040.npz"]
    assert (a / "clip_0000041.npz").exists()
    # same seeds -> same bytes, whatever the number of workers and the history of the process
    _run(b, 2)
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name

    ds = ClipDataset(a)
    assert len(ds) == 3
    item = ds[1]
    assert item["frames"].shape == (20, 64, 64, 3) and item["audio"].shape == (20 * 640,)
    assert item["mouth"].shape == (20, 2) and item["reference"].shape == (64, 64, 3)
    assert item["meta"]["seed"] == 41 and item["meta"]["fps"] == 25
    with pytest.raises(IndexError):
        ds[3]
    (a / "index.json").unlink()  # a directory still being generated is read from its files
    assert len(ClipDataset(a)) == 3
    assert np.array_equal(ClipDataset(a)[0]["audio"], ds[0]["audio"])


def test_heldout_seeds_are_refused(tmp_path):
    with pytest.raises(ValueError, match="held-out"):
        generate(tmp_path, clips=2, seed=HELDOUT_START - 1, progress=False)
    with pytest.raises(FileNotFoundError):
        ClipDataset(tmp_path / "missing")
