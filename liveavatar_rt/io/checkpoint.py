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
from ..model.fp8 import Fp8Linear, check_precision, fp8_targets, fp8_weight_entries, to_fp8
from ..ops.fp8_linear import E4M3
from ..ops import OpTable
from .fill import fill_module
from .lora import merge_lora_weight, parse_lora

FP8_FORMAT = "liveavatar_rt-dit-fp8/1"
FP8_FILE = "liveavatar_rt_fp8.safetensors"  # `liveavatar-rt quantize` writes it into a model directory


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
    files = sorted(f for f in p.glob("*.safetensors") if "lora" not in f.name and f.name not in ("liveavatar.safetensors", FP8_FILE))
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
             lora_scale: float = 0.5, ops: OpTable | None = None, precision: str = "bf16") -> CausalWanS2V:
    """Build `CausalWanS2V(cfg)` and fill it from `path` (published key names).

    dtype: parameter and compute dtype (bf16 = published path, fp32 = high-precision reference).
    lora: a LoRA safetensors file (or its state dict), merged as PEFT does, into the weight
    already cast to `dtype` (so bf16 weights get a bf16-rounded merge, fp32 ones an fp32 one).
    precision: "fp8" quantizes the published fp8 targets (model/fp8.py) after the merge, tensor
    by tensor as the shards are read; a checkpoint already saved in fp8 (`save_fp8_dit`) loads
    as it is (its LoRA is merged, so `lora` must be None).
    Errors name every missing / unexpected key and every shape mismatch.
    """
    check_precision(precision, dtype)
    ops = ops if ops is not None else OpTable(device, dtype)
    model = CausalWanS2V(cfg, ops)
    targets = {f"{n}.weight" for n in fp8_targets(model)} if precision == "fp8" else set()
    if targets:
        to_fp8(model)
    expected = {k for k, _ in model.named_parameters()}
    loras = parse_lora(read_safetensors(lora) if isinstance(lora, (str, os.PathLike)) else lora) if lora else {}
    unknown_lora = sorted(set(loras) - expected)
    if unknown_lora:
        raise KeyError(f"LoRA targets {len(unknown_lora)} weights the model does not have: {unknown_lora[:8]}")

    def convert(key: str, t: torch.Tensor):
        if t.dtype == E4M3 or key.endswith(".weight_scale"):  # a checkpoint saved in fp8
            if precision != "fp8":
                raise ValueError(f"{path} holds fp8 weights ({key}); load it with precision='fp8'")
            if loras:
                raise ValueError(f"{path} holds fp8 weights, whose LoRA was merged before quantizing: "
                                 "load it without a LoRA")
            return t.to(device)
        t = t.to(device=device, dtype=dtype)
        t = merge_lora_weight(t, *loras[key], lora_scale, key) if key in loras else t
        return fp8_weight_entries(key, t) if key in targets else t

    return fill_module(model, iter_tensors(dit_shards(path)), convert, f"checkpoint {path} does not fit the model {cfg}")


def save_fp8_dit(model: CausalWanS2V, path: str | os.PathLike) -> None:
    """Write an fp8 model's weights (E4M3 targets + their scales, the rest as they are, LoRA
    merged) to one safetensors file that `load_dit(path, cfg, precision="fp8")` reads back."""
    from safetensors.torch import save_file

    if not any(isinstance(m, Fp8Linear) for m in model.modules()):
        raise ValueError("save_fp8_dit: the model has no fp8 layers (load it with precision='fp8' first)")
    state = {k: v.detach().contiguous() for k, v in model.named_parameters()}
    save_file(state, str(path), metadata={"format": FP8_FORMAT, "lora_merged": "true"})


def check_fp8_file(path: str | os.PathLike) -> None:
    """Refuse a file at FP8_FILE's place that `save_fp8_dit` did not write: its metadata must name
    FP8_FORMAT and a merged LoRA (the published LoRA is not applied again when it loads)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FP8_FORMAT or meta.get("lora_merged") != "true":
        raise ValueError(f"{path} is not a liveavatar_rt fp8 DiT (metadata format={meta.get('format')!r}, "
                         f"lora_merged={meta.get('lora_merged')!r}; expected {FP8_FORMAT!r}, 'true'): "
                         "write it again with `liveavatar-rt quantize --model DIR`, or delete it")


def published_config(path: str | os.PathLike) -> ModelConfig | None:
    """ModelConfig from a `config.json` next to the checkpoint (diffusers layout), if present."""
    p = Path(path)
    cfg_file = (p if p.is_dir() else p.parent) / "config.json"
    if not cfg_file.is_file():
        return None
    raw = json.loads(cfg_file.read_text())
    raw = raw.get("model_constructor_args", raw)
    return ModelConfig.from_published(raw)
