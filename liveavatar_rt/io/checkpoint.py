"""Load the generator from a single-file tiny checkpoint or a published sharded directory.

The model is built on the meta device and filled shard by shard (each tensor cast, LoRA-merged
and assigned as it is read), so a 14B load never holds two copies of the model.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from ..config import ModelConfig
from ..model import CausalWanS2V
from ..ops import OpTable
from .fill import fill_module
from .lora import merge_lora_weight, parse_lora


def dit_shards(path: str | os.PathLike) -> list[Path]:
    """A .safetensors file, or a directory with `*.safetensors.index.json` (sharded) or exactly
    one `*.safetensors` -> the shard files to read."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"model path {str(p)!r} does not exist")
    index = sorted(p.glob("*.safetensors.index.json"))
    if index:
        meta = json.loads(index[0].read_text())
        names = sorted(set(meta.get("weight_map", {}).values()))
        missing = [n for n in names if not (p / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{index[0].name} lists shards missing from {p}: {missing}")
        return [p / n for n in names]
    files = sorted(f for f in p.glob("*.safetensors") if "lora" not in f.name and f.name != "liveavatar.safetensors")
    if len(files) != 1:
        raise FileNotFoundError(f"{p} has no '*.safetensors.index.json' and {len(files)} candidate "
                                f"'*.safetensors' DiT files (need exactly one): {[f.name for f in files]}")
    return files


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for key in sf.keys():
                yield key, sf.get_tensor(key)


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return dict(iter_tensors([Path(path)]))


def load_dit(path: str | os.PathLike, cfg: ModelConfig, dtype: torch.dtype = torch.bfloat16,
             device: str | torch.device = "cpu", lora: str | os.PathLike | dict | None = None,
             lora_scale: float = 0.5, ops: OpTable | None = None) -> CausalWanS2V:
    """Build `CausalWanS2V(cfg)` and fill it from `path` (published key names).

    dtype: parameter and compute dtype (bf16 = published path, fp32 = high-precision reference).
    lora: a LoRA safetensors file (or its state dict), merged as PEFT does, into the weight
    already cast to `dtype` (so bf16 weights get a bf16-rounded merge, fp32 ones an fp32 one).
    Errors name every missing / unexpected key and every shape mismatch.
    """
    ops = ops if ops is not None else OpTable(device, dtype)
    model = CausalWanS2V(cfg, ops)
    expected = {k for k, _ in model.named_parameters()}
    loras = parse_lora(read_safetensors(lora) if isinstance(lora, (str, os.PathLike)) else lora) if lora else {}
    unknown_lora = sorted(set(loras) - expected)
    if unknown_lora:
        raise KeyError(f"LoRA targets {len(unknown_lora)} weights the model does not have: {unknown_lora[:8]}")
    def convert(key: str, t: torch.Tensor) -> torch.Tensor:
        t = t.to(device=device, dtype=dtype)
        return merge_lora_weight(t, *loras[key], lora_scale, key) if key in loras else t

    return fill_module(model, iter_tensors(dit_shards(path)), convert, f"checkpoint {path} does not fit the model {cfg}")


def published_config(path: str | os.PathLike) -> ModelConfig | None:
    """ModelConfig from a `config.json` next to the checkpoint (diffusers layout), if present."""
    p = Path(path)
    cfg_file = (p if p.is_dir() else p.parent) / "config.json"
    if not cfg_file.is_file():
        return None
    raw = json.loads(cfg_file.read_text())
    raw = raw.get("model_constructor_args", raw)
    return ModelConfig.from_published(raw)
