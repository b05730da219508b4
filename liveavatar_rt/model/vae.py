"""The Wan2.1 causal video VAE: encode, full decode and streaming decode.

Sizes: space is scaled by 8 and time by 4; a video of 1 + 4k frames <-> 1 + k latent frames
(the first latent frame stands for one video frame, each later one for four).
Latents are normalised per channel: z = (mu - mean) * (1 / std).

Precision (SPEC 4b, the published bf16 path under CUDA autocast, emulated explicitly by the
ops): weights are stored in the compute dtype; convolutions round inputs to it, accumulate in
fp32 and round the output; RMS norms, SiLU after them and upsampling are fp32; attention has an
fp32 softmax; the latent (de)normalisation is elementwise in the compute dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import OpTable
from .vae_blocks import AttentionBlock, CausalCache, CausalConv3d, RMSNorm, Resample, ResidualBlock, assign_cache_slots

# Per-channel latent statistics of the published Wan2.1 VAE (rounded to the compute dtype at use).
WAN21_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of the Wan2.1 VAE. Defaults are the published (production) sizes."""

    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # published spelling
    latent_mean: tuple[float, ...] = WAN21_LATENT_MEAN
    latent_std: tuple[float, ...] = WAN21_LATENT_STD

    def __post_init__(self) -> None:
        for name in ("dim_mult", "temperal_downsample", "latent_mean", "latent_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(f"temperal_downsample needs {len(self.dim_mult) - 1} entries, got {self.temperal_downsample}")
        if len(self.latent_mean) != self.z_dim or len(self.latent_std) != self.z_dim:
            raise ValueError(f"latent mean/std need z_dim={self.z_dim} values each")

    @property
    def space_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def time_factor(self) -> int:
        return 2 ** sum(self.temperal_downsample)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "VAEConfig":
        """From a fixture's `vae_config.json` (`WanVAE_constructor_args`) or a flat dict.

        Latent mean/std are the published tables unless the dict overrides them.
        """
        args = dict(cfg.get("WanVAE_constructor_args", cfg))
        if args.get("attn_scales"):
            raise ValueError(f"attn_scales={args['attn_scales']}: the Wan2.1 VAE has none; not implemented")
        if args.get("dropout", 0.0):
            raise ValueError("dropout must be 0 for inference")
        kw = {k: args[k] for k in ("dim", "z_dim", "dim_mult", "num_res_blocks", "temperal_downsample") if k in args}
        return cls(**kw)


class Encoder3d(nn.Module):
    """[B, 3, T, H, W] video chunk -> [B, 2*z_dim, T', H/8, W/8] (mu | log_var before `conv1`)."""

    def __init__(self, ops, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(ops, 3, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for j in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(ops, cin if j == 0 else cout, cout))
            if i < len(cfg.dim_mult) - 1:
                blocks.append(Resample(ops, cout, "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"))
        self.downsamples = nn.ModuleList(blocks)
        top = dims[-1]
        self.middle = nn.ModuleList([ResidualBlock(ops, top, top), AttentionBlock(ops, top), ResidualBlock(ops, top, top)])
        self.head = nn.ModuleDict({"0": RMSNorm(ops, top), "2": CausalConv3d(ops, top, 2 * cfg.z_dim, 3, padding=1)})
        self.n_slots = assign_cache_slots(self)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for layer in (*self.downsamples, *self.middle):
            x = layer(x, cache)
        return self.head["2"](F.silu(self.head["0"](x)), cache)


class Decoder3d(nn.Module):
    """One latent frame [B, z_dim, 1, h, w] -> [B, 3, 1 or 4, 8h, 8w] (1 on a stream's first call)."""

    def __init__(self, ops, cfg: VAEConfig):
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.dim * m for m in (mult[-1], *mult[::-1])]
        temporal_up = cfg.temperal_downsample[::-1]
        self.conv1 = CausalConv3d(ops, cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.ModuleList([ResidualBlock(ops, dims[0], dims[0]), AttentionBlock(ops, dims[0]),
                                     ResidualBlock(ops, dims[0], dims[0])])
        blocks: list[nn.Module] = []
        for i, cout in enumerate(dims[1:]):
            # Every upsampling conv halves the channels, so levels after the first start at half.
            cin = dims[0] if i == 0 else dims[i] // 2
            for j in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(ops, cin if j == 0 else cout, cout))
            if i < len(mult) - 1:
                blocks.append(Resample(ops, cout, "upsample3d" if temporal_up[i] else "upsample2d"))
        self.upsamples = nn.ModuleList(blocks)
        self.head = nn.ModuleDict({"0": RMSNorm(ops, dims[-1]), "2": CausalConv3d(ops, dims[-1], 3, 3, padding=1)})
        self.n_slots = assign_cache_slots(self)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for layer in (*self.middle, *self.upsamples):
            x = layer(x, cache)
        return self.head["2"](F.silu(self.head["0"](x)), cache)


class WanVAE(nn.Module):
    """Wan2.1 VAE with the published state-dict names (`encoder.*`, `conv1.*`, `conv2.*`, `decoder.*`).

    dtype is the compute dtype (bf16: published production path; fp32: high-precision
    reference); weights are held in it. Parameters are created uninitialised: load them
    (`liveavatar_rt.io.vae_loading.load_vae`) or call `init_random_`.
    """

    def __init__(self, config: VAEConfig = VAEConfig(), dtype: torch.dtype = torch.bfloat16,
                 device: str | torch.device = "cpu", ops: OpTable | None = None):
        super().__init__()
        self.config = config
        self.ops = ops if ops is not None else OpTable(device, dtype)
        if self.ops.dtype != dtype:
            raise ValueError(f"OpTable dtype {self.ops.dtype} differs from the VAE dtype {dtype}")
        z = config.z_dim
        with torch.device(device):
            self.encoder = Encoder3d(self.ops, config)
            self.conv1 = CausalConv3d(self.ops, 2 * z, 2 * z, 1)  # -> mu | log_var
            self.conv2 = CausalConv3d(self.ops, z, z, 1)  # latent -> decoder input
            self.decoder = Decoder3d(self.ops, config)
        self.materialize_buffers_(device)
        self.requires_grad_(False)
        self._stream = VAEStreamDecoder(self)

    @property
    def dtype(self) -> torch.dtype:
        return self.ops.dtype

    def materialize_buffers_(self, device: str | torch.device) -> None:
        """(Re)create the latent mean and 1/std tables on `device` (after a meta-device build).

        As published: mean and std are tensors in the compute dtype and 1/std is computed (and
        rounded) in that dtype; both directions of the normalisation use 1/std, never std.
        """
        std = torch.tensor(self.config.latent_std, dtype=self.dtype, device=device)
        self.register_buffer("latent_mean", torch.tensor(self.config.latent_mean, dtype=self.dtype, device=device), persistent=False)
        self.register_buffer("latent_inv_std", 1.0 / std, persistent=False)

    @torch.no_grad()
    def init_random_(self, seed: int = 0) -> "WanVAE":
        """Random weights (tests): conv weights ~ N(0, 1/fan_in), biases ~ N(0, 0.05^2), gammas ~ 1 + N(0, 0.1^2)."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("gamma"):
                val = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            elif name.endswith("bias"):
                val = 0.05 * torch.randn(p.shape, generator=g)
            else:
                val = torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5)
            p.copy_(val)
        return self

    # -- encode ---------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [3, T, H, W] in [-1, 1], T = 1 + 4k -> normalised latent fp32 [z_dim, 1 + k, H/8, W/8].

        As published: a cleared cache, chunks of 1, 4, 4, ... frames, `conv1` over the whole
        latent, mu only (the deterministic latent).
        """
        tf, sf = self.config.time_factor, self.config.space_factor
        if video.dim() != 4 or video.shape[0] != 3 or (video.shape[1] - 1) % tf or video.shape[2] % sf or video.shape[3] % sf:
            raise ValueError(f"encode: expected video [3, 1+{tf}k, H, W] with H, W divisible by {sf}, got {tuple(video.shape)}")
        mu, _ = self.moments(video.to(device=self.latent_mean.device, dtype=self.dtype)[None])
        z = (mu - self._stat(self.latent_mean)) * self._stat(self.latent_inv_std)
        return z[0].float()

    def moments(self, x: torch.Tensor, cache: CausalCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 3, T, H, W] (compute dtype) -> un-normalised (mu, log_var) [B, z, F, h, w].

        Differentiable (training uses it). From a fresh (or empty) cache: T = 1+4k frames in
        chunks of 1, 4, 4, ... as published (F = 1+k); continuing a started `cache`: T = 4k
        frames in chunks of 4 (F = k). `conv1` is 1x1x1, so it runs on the whole latent."""
        tf = self.config.time_factor
        cache = cache if cache is not None else CausalCache(self.encoder.n_slots)
        fresh = all(s is None for s in cache.slots)
        starts = [0, *range(1, x.shape[2], tf)] if fresh else list(range(0, x.shape[2], tf))
        chunks = [self.encoder(x[:, :, s:(1 if fresh and s == 0 else s + tf)], cache) for s in starts]
        return self.conv1(torch.cat(chunks, dim=2)).chunk(2, dim=1)

    # -- decode ---------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [z_dim, F, h, w] -> video fp32 [3, 1 + 4(F-1), 8h, 8w], clamped to [-1, 1].

        Independent of the streaming state (a fresh cache, as the published `decode`).
        """
        return self._decode_frames(latent, CausalCache(self.decoder.n_slots))

    @torch.no_grad()
    def stream_decode(self, latent_chunk: torch.Tensor) -> torch.Tensor:
        """Streaming decode on this VAE's default stream; see `VAEStreamDecoder.decode`."""
        return self._stream.decode(latent_chunk)

    def reset_stream(self) -> None:
        """The next `stream_decode` starts from a cleared cache (published `first_decode`)."""
        self._stream.reset()

    def new_stream(self) -> "VAEStreamDecoder":
        """An independent streaming decoder sharing these weights."""
        return VAEStreamDecoder(self)

    def _stat(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, 1, 1, 1)

    def _check_latent(self, latent: torch.Tensor) -> None:
        if latent.dim() != 4 or latent.shape[0] != self.config.z_dim or latent.shape[1] < 1:
            raise ValueError(f"decode: expected a latent [{self.config.z_dim}, F>=1, h, w], got {tuple(latent.shape)}")

    def _decode_frames(self, latent: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        self._check_latent(latent)
        # The pipeline's latents are already in the compute dtype; de-normalise in that dtype.
        z = latent.to(device=self.latent_mean.device, dtype=self.dtype)[None]
        z = z / self._stat(self.latent_inv_std) + self._stat(self.latent_mean)
        return self.decode_raw(z, cache)[0].float().clamp_(-1, 1)

    def decode_raw(self, z: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """Un-normalised z [B, z_dim, F, h, w] -> frames [B, 3, T, 8h, 8w] (compute dtype, not
        clamped), continuing `cache`. Differentiable (training uses it)."""
        frames = []
        for i in range(z.shape[2]):
            # conv2 is 1x1x1, so running it per latent frame equals running it on the chunk;
            # doing it per frame makes the result independent of how the stream is chunked.
            frames.append(self.decoder(self.conv2(z[:, :, i:i + 1]), cache))
        return torch.cat(frames, dim=2)


class VAEStreamDecoder:
    """Streaming decoder state: the decoder's causal feature cache, kept across calls.

    The first call after construction or `reset()` starts from a cleared cache, so its first
    latent frame decodes to 1 video frame; every other latent frame decodes to 4. Decoding a
    latent in several calls equals decoding it in one (and equals `WanVAE.decode`).
    """

    def __init__(self, vae: WanVAE):
        self.vae = vae
        self._cache: CausalCache | None = None

    @property
    def first_decode(self) -> bool:
        return self._cache is None

    def reset(self) -> None:
        self._cache = None

    def fork(self) -> "VAEStreamDecoder":
        """An independent decoder continuing from this one's state. Cheap: the cache entries
        are shared, which is safe because the decoder layers replace them, never write them."""
        out = VAEStreamDecoder(self.vae)
        if self._cache is not None:
            out._cache = CausalCache(len(self._cache.slots))
            out._cache.slots = list(self._cache.slots)
        return out

    @torch.no_grad()
    def decode(self, latent_chunk: torch.Tensor) -> torch.Tensor:
        """latent_chunk [z_dim, f, h, w] -> fp32 [3, 4f (or 4f - 3 on the first call), 8h, 8w] in [-1, 1]."""
        self.vae._check_latent(latent_chunk)  # before touching the state
        if self._cache is None:
            self._cache = CausalCache(self.vae.decoder.n_slots)
        return self.vae._decode_frames(latent_chunk, self._cache)

    __call__ = decode
