"""Clip files: one .npz (zip of .npy members, deflate) per clip, readable with np.load.

Members: frames uint8 [T,H,W,3], audio float32 [T*640], mouth float32 [T,2], reference uint8
[H,W,3], mouth_box float32 [4], pose float32 [T,5], blink float32 [T], meta (0-d unicode array
holding JSON). No pickles: np.load(path) works with allow_pickle=False.

Written with fixed zip timestamps and a fixed member order, so the same clip gives the same
file bytes; deflate level 1 because generation time matters more than ~20% of disk.
Writes go to a temporary name and are renamed into place, so a killed run never leaves a
truncated file that a resumed run would skip.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from .clips import Clip

ARRAYS = ("frames", "audio", "mouth", "reference", "mouth_box", "pose", "blink")


def save_clip(clip: Clip, path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        members = [(k, getattr(clip, k)) for k in ARRAYS]
        members.append(("meta", np.array(json.dumps(clip.meta, sort_keys=True))))
        for name, arr in members:
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            buf = io.BytesIO()
            # (np.ascontiguousarray would turn the 0-d meta into shape (1,))
            arr = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            zf.writestr(info, buf.getvalue(), compresslevel=1)
    os.replace(tmp, path)


def load_meta(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return json.loads(z["meta"].item())


def load_clip(path) -> dict:
    """-> {name: array for ARRAYS} + {"meta": dict}."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in ARRAYS}
        out["meta"] = json.loads(z["meta"].item())
    return out
