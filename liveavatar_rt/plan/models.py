"""What the planner sizes: the named models, the frame size, and their modules built on meta.

`tiny`, `medium` (the random-weights benchmark size) and `s2v-14b` are config.py's presets;
tests use `medium` to check that the plan scales. Every module is built as the runtime builds it, on the meta device, with the dtypes the loaders give its parameters,
so its bytes are the real module's bytes without allocating them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig, PRESETS
from ..model import CausalWanS2V
from ..model.fp8 import to_fp8
from ..model.t5 import UMT5Config, UMT5Encoder
from ..model.vae import VAEConfig, WanVAE
from ..ops import OpTable
from ..ops.fp8_linear import E4M3

MEDIUM = PRESETS["medium"]


@dataclass(frozen=True)
class ModelSpec:
    """dit: the generator; vae: its Wan2.1 VAE; text: the umT5 encoder (None: the model takes
    prompt embeddings, as the tiny presets do); wav2vec: whether audio features come from
    wav2vec2-large (published) rather than log-mel (no weights); size: default (H, W) pixels."""

    dit: ModelConfig
    vae: VAEConfig
    text: UMT5Config | None
    wav2vec: bool
    size: tuple[int, int]


# The tiny sizes match engine/pipeline.py's TINY_VAE / TINY_MAX_AREA; the 14B ones its published files.
MODELS: dict[str, ModelSpec] = {
    "tiny": ModelSpec(PRESETS["tiny"], VAEConfig(dim=8), None, False, (128, 128)),
    "medium": ModelSpec(MEDIUM, VAEConfig(dim=8), None, False, (128, 128)),
    "s2v-14b": ModelSpec(PRESETS["s2v-14b"], VAEConfig(), UMT5Config.preset("umt5-xxl"), True, (384, 704)),
}


def model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; the planner knows {sorted(MODELS)}") from None


def parse_size(text: str | None, default: tuple[int, int]) -> tuple[int, int]:
    """'384x704' -> (384, 704) pixels, height x width. Both must be multiples of 64: the VAE
    divides by 8 and the stepper needs latent sizes divisible by 8 (frame packer 4x8x8)."""
    if text is None:
        return default
    parts = text.lower().replace("*", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--size {text!r}: use HEIGHTxWIDTH in pixels, e.g. 384x704")
    h, w = (int(p) for p in parts)
    if h <= 0 or w <= 0 or h % 64 or w % 64:
        raise ValueError(f"--size {text!r}: height and width must be positive multiples of 64 "
                         "(latent = pixels / 8, and the stepper needs latent sizes divisible by 8)")
    return h, w


def as_loaded_(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Give meta parameters the dtypes the loaders give them (io/checkpoint.load_dit's convert,
    io/fill.fill_module): E4M3 weights and their fp32 scales stay, everything else is `dtype`."""
    for name, p in list(module.named_parameters()):
        if p.dtype == E4M3 or name.endswith(".weight_scale") or p.dtype == dtype:
            continue
        mod_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(mod_name) if mod_name else module
        setattr(owner, attr, nn.Parameter(torch.empty(p.shape, dtype=dtype, device="meta"), requires_grad=False))
    return module


def meta_dit(cfg: ModelConfig, precision: str, ops: OpTable) -> CausalWanS2V:
    """The generator on meta as load_dit builds it: Fp8Linear swapped in first for fp8."""
    model = CausalWanS2V(cfg, ops)
    if precision == "fp8":
        to_fp8(model)
    return as_loaded_(model, ops.dtype).eval()


def meta_vae(cfg: VAEConfig, ops: OpTable) -> WanVAE:
    return WanVAE(cfg, dtype=ops.dtype, device="meta", ops=ops)


def meta_text_encoder(cfg: UMT5Config, ops: OpTable) -> nn.Module:
    return as_loaded_(UMT5Encoder(cfg, ops), ops.dtype)


def meta_wav2vec(dtype: torch.dtype) -> nn.Module | None:
    """wav2vec2-large-xlsr-53-english (the published audio model: 24 layers, 1024 wide, a
    33-token CTC head), as transformers builds it; None without `transformers` (optional)."""
    try:
        import transformers
    except ImportError:
        return None
    cfg = transformers.Wav2Vec2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                      intermediate_size=4096, feat_extract_norm="layer", do_stable_layer_norm=True,
                                      conv_bias=True, vocab_size=33)
    with torch.device("meta"):
        model = transformers.Wav2Vec2ForCTC(cfg)
    return as_loaded_(model, dtype)


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers, each storage once."""
    return storage_bytes(*module.parameters(), *module.buffers())


def storage_bytes(*tensors: torch.Tensor | None) -> int:
    """Bytes held by the storages of `tensors` (each storage counted once; None skipped)."""
    seen = {id(st): st for st in (t.untyped_storage() for t in tensors if t is not None)}
    return sum(st.nbytes() for st in seen.values())
