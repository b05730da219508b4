"""Frozen model configs and named presets.

`ModelConfig` describes the generator (CausalWanModel_S2V); names follow the published
diffusers config so a published `config.json` maps onto it (`ModelConfig.from_published`).
Presets: `s2v-14b` (the published sizes) and `tiny` (~2M parameters, golden-fixture sizes).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ModelConfig:
    dim: int = 5120
    ffn_dim: int = 13824
    num_heads: int = 40
    num_layers: int = 40
    in_dim: int = 16
    out_dim: int = 16
    freq_dim: int = 256
    text_dim: int = 4096  # fixed at 4096 by the published loader whatever a config says
    text_len: int = 512
    eps: float = 1e-6
    patch_size: tuple[int, int, int] = (1, 2, 2)
    cond_dim: int = 16
    audio_dim: int = 1024  # wav2vec2 hidden size
    audio_layers: int = 25  # wav2vec2 hidden states mixed by the causal audio encoder
    num_audio_tokens: int = 4
    audio_inject_layers: tuple[int, ...] = (0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39)
    zip_frame_buckets: tuple[int, int, int] = (1, 2, 16)
    # Published RoPE table length (positions >= this overflow there); engine.positions.PositionPolicy's
    # default limit. (RoPE tables here are computed on the fly, model/rope.py, so nothing else uses it.)
    rope_table_len: int = 45000
    ref_time_index: int = 30  # RoPE time position of the reference latent

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        if self.dim % 4:
            raise ValueError(f"dim {self.dim} must be divisible by 4 (audio encoder hidden/4)")
        bad = [i for i in self.audio_inject_layers if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(f"audio_inject_layers {bad} are outside [0, {self.num_layers})")
        if tuple(self.patch_size) != (1, 2, 2):
            raise ValueError(f"patch_size {self.patch_size}: only (1, 2, 2) is supported")
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        object.__setattr__(self, "audio_inject_layers", tuple(self.audio_inject_layers))
        object.__setattr__(self, "zip_frame_buckets", tuple(self.zip_frame_buckets))

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Real dims of the (time, height, width) RoPE parts: 44/42/42 at head_dim 128."""
        d = self.head_dim
        return d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)

    @classmethod
    def from_published(cls, cfg: dict[str, Any]) -> "ModelConfig":
        """Map a published diffusers config dict (CausalWanModel_S2V) onto a ModelConfig.

        Only the options the published inference uses are accepted; anything that changes the
        architecture in a way this runtime does not implement raises.
        """
        unsupported = {
            "enable_motioner": False, "enable_framepack": True, "framepack_drop_mode": "padd",
            "zero_timestep": True, "enable_adain": True, "adain_mode": "attn_norm", "model_type": "s2v",
            "add_last_motion": True, "enable_tsm": False,
        }
        for key, want in unsupported.items():
            if key in cfg and cfg[key] != want:
                raise ValueError(f"published config {key}={cfg[key]!r} is not supported (need {want!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: cfg[k] for k in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim",
                                  "freq_dim", "text_len", "eps", "cond_dim", "audio_dim") if k in cfg}
        if "num_audio_token" in cfg:
            kw["num_audio_tokens"] = cfg["num_audio_token"]
        if "audio_inject_layers" in cfg:
            kw["audio_inject_layers"] = tuple(cfg["audio_inject_layers"])
        assert set(kw) <= names
        return cls(**kw)

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)


@dataclass(frozen=True)
class StreamConfig:
    """Streaming geometry and sampler settings (SPEC sections 1, 2, 4)."""

    frames_per_block: int = 3  # latent frames per block (12 video frames)
    blocks_per_clip: int = 4
    cache_frames: int = 12  # ring window per step cache, in latent frames
    motion_frames: int = 73  # pixel frames of motion context
    motion_latent_frames: int = 19
    audio_prefix_frames: int = 73  # copies of the block's first audio frame prepended
    sampling_steps: int = 4
    shift: float = 3.0
    num_train_timesteps: int = 1000
    sink_offset_range: tuple[int, int] = (4, 30)
    fps: int = 25
    # Capture each owned denoising step once per session shape as a CUDA graph and replay it per
    # block (engine/graphs.py). None: on where the model runs on CUDA, off elsewhere; True on a
    # non-CUDA device is an error when a stepper is built; False: always eager.
    cuda_graphs: bool | None = None

    def __post_init__(self) -> None:
        if self.cuda_graphs is not None and not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be True, False or None (auto), got {self.cuda_graphs!r}")
        if self.cache_frames % self.frames_per_block:
            raise ValueError(f"cache_frames {self.cache_frames} must be a multiple of frames_per_block {self.frames_per_block}")
        lo, hi = self.sink_offset_range
        if not 0 <= lo <= hi:
            raise ValueError(f"sink_offset_range {self.sink_offset_range} is not a range")


PRESETS: dict[str, ModelConfig] = {
    "s2v-14b": ModelConfig(),
    "tiny": ModelConfig(dim=128, ffn_dim=256, num_heads=2, num_layers=3, text_len=16,
                        audio_dim=32, audio_inject_layers=(0, 2)),
    # the 14B's head width (4 heads x 128) and FFN ratio at a CPU size; random weights only (a
    # benchmark / planner size, engine/pipeline.py RANDOM_PRESETS); 128 log-mel bands as audio
    "medium": ModelConfig(dim=512, ffn_dim=1536, num_heads=4, num_layers=8, audio_dim=128,
                          audio_inject_layers=(0, 4)),
}


def from_name(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}") from None


# CLI spelling of StreamConfig.cuda_graphs (generate, python -m liveavatar_rt.parallel)
CUDA_GRAPH_CHOICES = {"auto": None, "on": True, "off": False}

# The one map from CLI / config dtype names to torch dtypes (CPU runs bf16, never fp16).
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
PRECISIONS = ("bf16", "fp8")  # linear layers: bf16, or the published --fp8 (model/fp8.py)
# K/V cache storage beyond the compute dtype (None): fp8 = E4M3 + per-token-per-head scales (cache/kv.py)
KV_CACHE_DTYPES = {"fp8": torch.float8_e4m3fn}


def check_kv_cache_dtype(name: str | None) -> None:
    if name is not None and name not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype {name!r}: use None (the compute dtype) or one of {sorted(KV_CACHE_DTYPES)}")
# The audio rate of the features and of Block.audio PCM (input at any rate is resampled to it).
AUDIO_RATE = 16000
