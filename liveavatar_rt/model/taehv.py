"""TAEHV-layout tiny video autoencoder: 2-D convs with a one-frame causal memory.

The layout and state-dict names are those of the community TAEHV models (madebyollin/taehv,
`taehv.py`); `TAEW2_1` is the configuration of its `taew2_1` weights, which encode and decode
the Wan 2.1 latent space (16 channels, space / 8, time / 4) that Wan2.2-S2V-14B uses. Narrower
widths (`TAEHVConfig.decoder_widths`) give cheap decoders for the tiny model.

Sizes: frames [B, 3, T, H, W] <-> latents [B, z, ceil(T/4), H/8, W/8]. The decoder turns each
latent frame into 4 frames and drops the first 3 of a stream, so F latents decode to 4F - 3
frames, as the Wan VAE does; frame j of the decode is frame j of the encoded video.

Layers (`encoder.N`, `decoder.N` index an `nn.Sequential`, as published):
- `MemBlock(x_t, x_{t-1})`: relu(convs(cat[x_t, x_{t-1}]) + skip(x_t)), where x_{t-1} is the
  block's input one frame earlier (zeros before the first): the only path between frames.
- `TPool` (encoder): `stride` consecutive frames -> one, a 1x1 conv over their stacked channels.
- `TGrow` (decoder): one frame -> `stride` frames, a 1x1 conv to stride * C channels, split.
- `Clamp`: 3 tanh(z / 3) on the decoder input.
Everything else acts on each frame alone, so a stream decodes block by block with one carried
frame per MemBlock (`TAEHVStreamDecoder`) and equals the whole-clip decode.

Units: the published models work on frames in [0, 1] and on the latents the diffusion model
uses (no latent mean / std). `encode` / `decode` take and return [-1, 1] video like `WanVAE`;
`encode_raw` / `decode_raw` are the differentiable [0, 1] forms training uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


def conv(n_in: int, n_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the decoder input to (-3, 3): 3 tanh(x / 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """x, past [N, C, H, W] -> relu(conv(cat[x, past]) + skip(x)); keys conv.{0,2,4}, skip."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(conv(n_in * 2, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TPool(nn.Module):
    """[N*T, C, H, W] -> [N*T/stride, C, H, W]: each `stride` consecutive frames, stacked on
    channels (earliest first), through a 1x1 conv."""

    def __init__(self, n_f: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f * stride, n_f, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, C, H, W = x.shape
        return self.conv(x.reshape(-1, self.stride * C, H, W))


class TGrow(nn.Module):
    """[N*T, C, H, W] -> [N*T*stride, C, H, W]: a 1x1 conv to stride * C channels, channel
    chunk k becoming sub-frame k."""

    def __init__(self, n_f: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f, n_f * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, C, H, W = x.shape
        return self.conv(x).reshape(-1, C, H, W)


@dataclass(frozen=True)
class TAEHVConfig:
    """Architecture. Defaults are `taew2_1` (and `taehv`): 64-wide encoder, (256, 128, 64, 64)
    decoder, time / 4 in the encoder's first two stages, time x 4 in the decoder's last two."""

    latent_channels: int = 16
    patch_size: int = 1  # pixel (un)shuffle of the frames around the network
    encoder_width: int = 64
    decoder_widths: tuple[int, int, int, int] = (256, 128, 64, 64)
    encoder_time_downscale: tuple[bool, bool, bool] = (True, True, False)
    decoder_time_upscale: tuple[bool, bool, bool] = (False, True, True)
    decoder_space_upscale: tuple[bool, bool, bool] = (True, True, True)

    def __post_init__(self) -> None:
        for name in ("decoder_widths", "encoder_time_downscale", "decoder_time_upscale", "decoder_space_upscale"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.decoder_widths) != 4 or min(self.decoder_widths) < 1 or self.encoder_width < 1:
            raise ValueError(f"decoder_widths needs 4 positive widths, got {self.decoder_widths}")
        for name in ("encoder_time_downscale", "decoder_time_upscale", "decoder_space_upscale"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name} needs 3 entries, got {getattr(self, name)}")
        if self.t_downscale != self.t_upscale:
            raise ValueError(f"encoder time / {self.t_downscale} but decoder time x {self.t_upscale}")

    @property
    def t_downscale(self) -> int:
        return 2 ** sum(self.encoder_time_downscale)

    @property
    def t_upscale(self) -> int:
        return 2 ** sum(self.decoder_time_upscale)

    @property
    def frames_to_trim(self) -> int:
        """Decoded frames dropped at the start of a stream (a latent stands for the frame it
        ends on, as Wan's first latent stands for frame 0 alone)."""
        return self.t_upscale - 1

    @property
    def space_factor(self) -> int:
        return 8 * self.patch_size  # the encoder's three stride-2 convs, then the patch

    @property
    def decoder_space_factor(self) -> int:
        return 2 ** sum(self.decoder_space_upscale) * self.patch_size


TAEW2_1 = TAEHVConfig()  # madebyollin/taehv `taew2_1.pth`: Wan 2.1 latents (and Wan 2.2 14B)


def _encoder(cfg: TAEHVConfig) -> nn.Sequential:
    c, layers = cfg.encoder_width, [conv(3 * cfg.patch_size ** 2, cfg.encoder_width), nn.ReLU()]
    for down in cfg.encoder_time_downscale:
        layers += [TPool(c, 2 if down else 1), conv(c, c, stride=2, bias=False), MemBlock(c, c), MemBlock(c, c), MemBlock(c, c)]
    return nn.Sequential(*layers, conv(c, cfg.latent_channels))


def _decoder(cfg: TAEHVConfig) -> nn.Sequential:
    n = cfg.decoder_widths
    layers = [Clamp(), conv(cfg.latent_channels, n[0]), nn.ReLU()]
    for i, (up_t, up_s) in enumerate(zip(cfg.decoder_time_upscale, cfg.decoder_space_upscale)):
        layers += [MemBlock(n[i], n[i]), MemBlock(n[i], n[i]), MemBlock(n[i], n[i]), nn.Upsample(scale_factor=2 if up_s else 1),
                   TGrow(n[i], 2 if up_t else 1), conv(n[i], n[i + 1], bias=False)]
    return nn.Sequential(*layers, nn.ReLU(), conv(n[3], 3 * cfg.patch_size ** 2))


Memory = list  # per layer index: the last input frame [B, C, H, W] of a MemBlock, else None


def run_layers(layers: nn.Sequential, x: torch.Tensor, memory: Memory | None = None) -> tuple[torch.Tensor, Memory]:
    """x [B, T, C, H, W] -> (y [B, T', C', H', W'], memory after the last frame).

    All frames of the chunk at once, layer by layer; each MemBlock's past is its own input
    shifted one frame, the first frame's past taken from `memory` (zeros when None: a fresh
    stream). The returned memory is new (the given one is not modified), so states can fork.
    TPool needs T at its input divisible by its stride."""
    B, T = x.shape[:2]
    x = x.flatten(0, 1)
    new: Memory = [None] * len(layers)
    for i, layer in enumerate(layers):
        if isinstance(layer, MemBlock):
            cur = x.unflatten(0, (B, T))
            prev = memory[i] if memory is not None and memory[i] is not None else torch.zeros_like(cur[:, 0])
            past = torch.cat([prev[:, None], cur[:, :-1]], 1)
            new[i] = cur[:, -1].clone()
            x = layer(x, past.flatten(0, 1))
        elif isinstance(layer, TPool):
            if T % layer.stride:
                raise ValueError(f"layer {i} pools {layer.stride} frames but got {T}")
            x, T = layer(x), T // layer.stride
        elif isinstance(layer, TGrow):
            x, T = layer(x), T * layer.stride
        else:
            x = layer(x)
    return x.unflatten(0, (B, T)), new


@dataclass
class DecodeState:
    """A stream's decoder state: MemBlock memory and how many raw frames it has produced."""

    memory: Memory | None = None
    frames: int = 0


class TAEHV(nn.Module):
    """Encoder + decoder with the published key names (`encoder.N.*`, `decoder.N.*`).

    Parameters get PyTorch's default init; load weights with `load_taehv` (or
    `load_state_dict_checked`) or call `init_random_` for tests.
    """

    def __init__(self, config: TAEHVConfig = TAEW2_1, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        super().__init__()
        self.config = config
        with torch.device(device):
            self.encoder = _encoder(config)
            self.decoder = _decoder(config)
        self.to(dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder[1].weight.dtype

    @torch.no_grad()
    def init_random_(self, seed: int = 0) -> "TAEHV":
        """Random weights (tests): He-normal convs (activations keep their scale through the
        ReLUs), biases ~ N(0, 0.05^2)."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            std = 0.05 if name.endswith("bias") else (2.0 / p[0].numel()) ** 0.5
            p.copy_(torch.randn(p.shape, generator=g) * std)
        return self

    # -- differentiable forms ([0, 1] frames, [B, C, T, H, W]) ------------------------------

    def encode_raw(self, x: torch.Tensor, memory: Memory | None = None) -> tuple[torch.Tensor, Memory]:
        """x [B, 3, T, H, W] in [0, 1], T divisible by 4 -> (latent [B, z, T/4, H/8, W/8], memory)."""
        cfg = self.config
        if x.dim() != 5 or x.shape[1] != 3 or x.shape[2] % cfg.t_downscale or x.shape[3] % cfg.space_factor or x.shape[4] % cfg.space_factor:
            raise ValueError(f"encode: expected [B, 3, {cfg.t_downscale}k, H, W] with H, W divisible by "
                             f"{cfg.space_factor}, got {tuple(x.shape)}")
        x = x.transpose(1, 2)
        if cfg.patch_size > 1:
            x = torch.nn.functional.pixel_unshuffle(x.flatten(0, 1), cfg.patch_size).unflatten(0, x.shape[:2])
        z, memory = run_layers(self.encoder, x, memory)
        return z.transpose(1, 2), memory

    def decode_raw(self, z: torch.Tensor, state: DecodeState | None = None) -> tuple[torch.Tensor, DecodeState]:
        """z [B, z, F, h, w] -> (frames [B, 3, T, 8h, 8w] in ~[0, 1], not clamped; new state).

        T = 4F, less the frames still to trim at the start of a stream (3 on a fresh state)."""
        cfg = self.config
        if z.dim() != 5 or z.shape[1] != cfg.latent_channels or z.shape[2] < 1:
            raise ValueError(f"decode: expected a latent [B, {cfg.latent_channels}, F>=1, h, w], got {tuple(z.shape)}")
        state = state or DecodeState()
        y, memory = run_layers(self.decoder, z.transpose(1, 2).to(self.dtype), state.memory)
        if cfg.patch_size > 1:
            y = torch.nn.functional.pixel_shuffle(y.flatten(0, 1), cfg.patch_size).unflatten(0, y.shape[:2])
        trim = max(0, cfg.frames_to_trim - state.frames)
        return y[:, trim:].transpose(1, 2), DecodeState(memory, state.frames + y.shape[1])

    # -- inference forms ([-1, 1] video, unbatched like WanVAE) ------------------------------

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [3, T, H, W] in [-1, 1] -> latent fp32 [z, ceil(T/4), H/8, W/8].

        As published, T is padded at the end to a multiple of 4 by repeating the last frame."""
        if video.dim() != 4:
            raise ValueError(f"encode: expected video [3, T, H, W], got {tuple(video.shape)}")
        x = (video.to(self.dtype) + 1) / 2
        pad = -x.shape[1] % self.config.t_downscale
        if pad:
            x = torch.cat([x, x[:, -1:].expand(-1, pad, -1, -1)], 1)
        return self.encode_raw(x[None])[0][0].float()

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [z, F, h, w] -> video fp32 [3, 4F - 3, 8h, 8w] in [-1, 1] (a fresh stream)."""
        return self.new_stream().decode(latent)

    def new_stream(self) -> "TAEHVStreamDecoder":
        return TAEHVStreamDecoder(self)


class TAEHVStreamDecoder:
    """Streaming decode: feed latent blocks [z, f, h, w] in order; each MemBlock's last input
    frame is carried to the next call. The first call returns 4f - 3 frames, later ones 4f, and
    the concatenated output equals `TAEHV.decode` of the concatenated latents."""

    def __init__(self, model: TAEHV):
        self.model, self.state = model, DecodeState()

    @property
    def first_decode(self) -> bool:
        return self.state.frames == 0

    def reset(self) -> None:
        self.state = DecodeState()

    def fork(self) -> "TAEHVStreamDecoder":
        """An independent decoder continuing from this state (memory tensors are never written
        in place, so they are shared)."""
        out = TAEHVStreamDecoder(self.model)
        out.state = DecodeState(None if self.state.memory is None else list(self.state.memory), self.state.frames)
        return out

    @torch.no_grad()
    def decode(self, latent_chunk: torch.Tensor) -> torch.Tensor:
        """latent_chunk [z, f, h, w] -> fp32 [3, 4f (4f - 3 on the first call), 8h, 8w] in [-1, 1]."""
        if latent_chunk.dim() != 4:
            raise ValueError(f"decode: expected a latent [z, f, h, w], got {tuple(latent_chunk.shape)}")
        y, self.state = self.model.decode_raw(latent_chunk[None], self.state)
        return y[0].float().clamp_(0, 1).mul_(2).sub_(1)

    __call__ = decode


# -- loading ------------------------------------------------------------------------------

def adapt_tgrow_rows(sd: dict[str, torch.Tensor], model: TAEHV) -> dict[str, torch.Tensor]:
    """Checkpoints trained with more decoder time upscaling than the model is built with (a
    TGrow weight with k times the model's rows) keep the rows of the last sub-frame, as the
    published loader does. Other keys pass unchanged; a non-multiple is left for the check."""
    sd = dict(sd)
    for i, layer in enumerate(model.decoder):
        key = f"decoder.{i}.conv.weight"
        if isinstance(layer, TGrow) and key in sd:
            want, have = layer.conv.weight.shape[0], sd[key].shape[0]
            if have > want and have % want == 0 and sd[key].shape[1:] == layer.conv.weight.shape[1:]:
                sd[key] = sd[key][-want:]
    return sd


def load_state_dict_checked(model: TAEHV, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> TAEHV:
    """Load `sd` by key name (TGrow rows adapted); raises `VAECheckpointError` (a ValueError)
    listing every missing key, unexpected key and shape mismatch, before touching the model."""
    from ..io.vae_loading import check_vae_state_dict

    sd = adapt_tgrow_rows(sd, model)
    check_vae_state_dict(sd, {k: v.shape for k, v in model.state_dict().items()}, source=f"{source} (TAEHV layout)")
    model.load_state_dict({k: v.to(model.dtype) for k, v in sd.items()}, strict=True)
    return model


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> TAEHVConfig:
    """The widths, latent channels and patch size a TAEHV-layout state dict was built with
    (time / space scaling: the taew2_1 pattern). Decoder stage i ends with conv `decoder.{8+6i}`."""
    try:
        enc, dec = sd["encoder.0.weight"], sd["decoder.1.weight"]
        widths = (dec.shape[0], *(sd[f"decoder.{8 + 6 * i}.weight"].shape[0] for i in range(3)))
    except KeyError as e:
        raise ValueError(f"not a TAEHV-layout state dict: no {e.args[0]!r}") from None
    patch = int(round((enc.shape[1] / 3) ** 0.5))
    return TAEHVConfig(latent_channels=dec.shape[1], patch_size=patch, encoder_width=enc.shape[0],
                       decoder_widths=widths)


def load_taehv(path: str | Path, config: TAEHVConfig | None = TAEW2_1, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> TAEHV:
    """A user-supplied `.pth` (plain state dict) or `.safetensors` in the TAEHV layout, e.g.
    madebyollin/taehv's `taew2_1.pth`, loaded into a `TAEHV(config)` (None: the config the
    file's shapes say, `config_from_state_dict`). Nothing is downloaded."""
    from ..io.vae_loading import read_vae_state_dict

    sd = read_vae_state_dict(path)
    model = TAEHV(config or config_from_state_dict(sd), dtype=dtype, device=device)
    load_state_dict_checked(model, sd, source=str(path))
    return model.requires_grad_(False).eval()
