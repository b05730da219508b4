"""Read a generated clip directory (recipes.tiny.generate) for training.

    ds = ClipDataset("data/tiny")
    item = ds[i]   # {"frames": uint8 [T,H,W,3], "audio": float32 [T*640], "mouth": float32 [T,2],
                   #  "reference": uint8 [H,W,3], "mouth_box": float32 [4], "pose": float32 [T,5],
                   #  "blink": float32 [T], "meta": dict}

Plain numpy, no torch dependency; it has __len__/__getitem__, so it works directly as a
torch map-style Dataset. Uses index.json when present, otherwise the clip_*.npz files in name
order (so a directory still being generated can be read).
"""
from __future__ import annotations

import json
from pathlib import Path

from .clips import HELDOUT_START
from .store import load_clip


class ClipDataset:
    def __init__(self, root, heldout: bool | None = False):
        """heldout: False -> only training identities (seed < HELDOUT_START), True -> only
        held-out ones, None -> all."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"clip directory not found: {self.root}")
        index = self.root / "index.json"
        if index.exists():
            recs = json.loads(index.read_text())["clips"]
            files = [(r["file"], r["identity_seed"]) for r in recs]
        else:
            # clip_<seed>.npz: identity seed == clip seed for generated clips
            files = [(p.name, int(p.stem.split("_")[1]))
                     for p in sorted(self.root.glob("clip_*.npz"))]
        if heldout is not None:
            files = [f for f in files if (f[1] >= HELDOUT_START) == heldout]
        self.files = [self.root / f for f, _ in files]
        if not self.files:
            raise FileNotFoundError(f"no clips in {self.root} "
                                    "(run python -m recipes.tiny.generate)")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"clip index {i} out of range for {len(self)} clips")
        return load_clip(self.files[i])
