"""The published model directory: its file names, and the fp8 file `liveavatar-rt quantize` adds."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from .checkpoint import FP8_FILE, load_dit, published_config, save_fp8_dit

# The published layout: the Wan2.2-S2V-14B folder plus the Live Avatar LoRA file.
PUBLISHED_FILES = {
    "Live Avatar LoRA": "liveavatar.safetensors",
    "Wan2.1 VAE": "Wan2.1_VAE.pth",
    "umT5 encoder": "models_t5_umt5-xxl-enc-bf16.pth",
    "umT5 tokenizer folder": "google/umt5-xxl",
    "wav2vec2 folder": "wav2vec2-large-xlsr-53-english",
}


def quantize_published(root: str | os.PathLike, out: str | os.PathLike | None = None, quiet: bool = False) -> Path:
    """Write the fp8 DiT of a published-layout directory (LoRA merged, then the published fp8
    rule) to `out` (default root/liveavatar_rt_fp8.safetensors, which from_pretrained(root,
    precision="fp8") then reads instead of the bf16 shards + LoRA: half the bytes to load).
    The shards stream in one tensor at a time: peak memory is the fp8 model, not a bf16 copy."""

    root = Path(root)
    cfg = published_config(root)
    lora = root / PUBLISHED_FILES["Live Avatar LoRA"]
    if cfg is None or not lora.is_file():
        raise FileNotFoundError(f"{root} is not a published-layout directory (needs config.json and {lora.name})")
    out = Path(out) if out is not None else root / FP8_FILE
    t0 = time.perf_counter()
    model = load_dit(root, cfg, dtype=torch.bfloat16, lora=lora, precision="fp8")
    save_fp8_dit(model, out)
    if not quiet:
        print(f"liveavatar_rt: wrote {out} ({out.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
    return out
