"""Building blocks of the Wan2.1 causal video VAE.

Tensors are [B, C, T, H, W]. Parameter names follow the published checkpoint
(`residual.{0,2,3,6}`, `shortcut`, `resample.1`, `time_conv`, `norm`, `to_qkv`, `proj`, ...),
so the published state dict loads unchanged. The math goes through the shared `OpTable`
(`self.ops`, compute dtype `ops.dtype`): convolutions round to the compute dtype around an fp32
kernel, the RMS norm is fp32, upsampling is fp32, attention has an fp32 softmax.

Streaming: the VAE runs over a video a few frames at a time. Every temporal layer keeps, in a
`CausalCache` slot, the part of its input history it still needs, so that chunked processing
equals processing the whole sequence with causal zero padding at the start.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalCache:
    """Temporal history of one encoder or decoder stream: one entry per temporal layer.

    An entry is None before the layer has seen any frame; otherwise it holds that layer's
    last input frames (see each layer for what exactly).
    """

    def __init__(self, n_slots: int):
        self.slots: list[torch.Tensor | None] = [None] * n_slots


def assign_cache_slots(root: nn.Module) -> int:
    """Number every layer of `root` that keeps temporal history; returns the slot count."""
    n = 0
    for m in root.modules():
        if getattr(m, "needs_cache_slot", False):
            m.slot = n
            n += 1
    return n


def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


class Conv2d(nn.Module):
    """Per-frame 2-D convolution (keys `weight` [out, in, k, k], `bias` [out])."""

    def __init__(self, ops, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.ops, self.stride, self.padding = ops, stride, padding
        self.weight = nn.Parameter(torch.empty(cout, cin, k, k, dtype=ops.dtype))
        self.bias = nn.Parameter(torch.empty(cout, dtype=ops.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, in, H, W] -> [N, out, H', W'] in the compute dtype."""
        return self.ops.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.ops.dtype)


class CausalConv3d(nn.Module):
    """3-D convolution, causal in time: `padding` p_t becomes 2*p_t zero frames in front only.

    With a cache, the missing front frames are first taken from the layer's past input (the
    last 2*p_t frames seen), and only what is still missing is zero-padded: chunked calls then
    give exactly the output of one call on the concatenated input.
    """

    def __init__(self, ops, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        kt, kh, kw = _triple(kernel)
        pt, ph, pw = _triple(padding)
        self.ops, self.stride = ops, _triple(stride)
        self.time_pad = 2 * pt
        self.space_pad = (pw, pw, ph, ph)
        self.needs_cache_slot = self.time_pad > 0
        self.slot: int | None = None
        self.weight = nn.Parameter(torch.empty(cout, cin, kt, kh, kw, dtype=ops.dtype))
        self.bias = nn.Parameter(torch.empty(cout, dtype=ops.dtype))

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        """x: [B, in, T, H, W] -> [B, out, T', H', W'] (T' = T for stride 1)."""
        front = self.time_pad
        if front and cache is not None:
            past = cache.slots[self.slot]
            seq = x if past is None else torch.cat([past, x], dim=2)
            front -= seq.shape[2] - x.shape[2]
            # Keep at most time_pad frames: all the history the next call can use.
            cache.slots[self.slot] = seq[:, :, -self.time_pad:].clone()
            x = seq
        # Explicit pad (time front only + space both sides), then an unpadded conv: the same
        # input shape as the published layer, hence the same kernel and summation order.
        x = F.pad(x, (*self.space_pad, front, 0))
        return self.ops.conv3d(x, self.weight, self.bias, self.stride, 0, self.ops.dtype)


class RMSNorm(nn.Module):
    """Channel RMS norm (key `gamma`, [C, 1, 1, 1] for video or [C, 1, 1] for images). fp32 out."""

    def __init__(self, ops, dim: int, images: bool = False):
        super().__init__()
        self.ops = ops
        shape = (dim, 1, 1) if images else (dim, 1, 1, 1)
        self.gamma = nn.Parameter(torch.empty(shape, dtype=ops.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.vae_rms_norm(x, self.gamma)


class ResidualBlock(nn.Module):
    """norm, SiLU, conv3x3x3, norm, SiLU, (dropout 0), conv3x3x3, plus a 1x1x1 shortcut if C changes.

    The submodules sit at the published `residual.<i>` indices (1, 4, 5 were SiLU / dropout).
    """

    def __init__(self, ops, cin: int, cout: int):
        super().__init__()
        self.residual = nn.ModuleDict({
            "0": RMSNorm(ops, cin), "2": CausalConv3d(ops, cin, cout, 3, padding=1),
            "3": RMSNorm(ops, cout), "6": CausalConv3d(ops, cout, cout, 3, padding=1),
        })
        self.shortcut = CausalConv3d(ops, cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        r = self.residual
        skip = x if self.shortcut is None else self.shortcut(x)
        # The norms return fp32, so SiLU runs in fp32; each conv rounds its input itself.
        h = r["2"](F.silu(r["0"](x)), cache)
        h = r["6"](F.silu(r["3"](h)), cache)
        return h + skip


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of each frame, plus the identity."""

    def __init__(self, ops, dim: int):
        super().__init__()
        self.ops = ops
        self.norm = RMSNorm(ops, dim, images=True)
        self.to_qkv = Conv2d(ops, dim, 3 * dim, 1)
        self.proj = Conv2d(ops, dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        """x: [B, C, T, H, W] -> same shape. No temporal context, so `cache` is unused."""
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(frames))  # [bt, 3C, H, W], channels ordered q | k | v
        qkv = qkv.reshape(b * t, 3 * c, h * w).transpose(1, 2)  # [bt, HW, 3C]
        q, k, v = (u.unsqueeze(2) for u in qkv.chunk(3, dim=-1))  # [bt, HW, 1 head, C]
        o = self.ops.attention(q, k, v)  # fp32 softmax, output in the compute dtype
        o = o.squeeze(2).transpose(1, 2).reshape(b * t, c, h, w)
        o = self.proj(o)
        return o.reshape(b, t, c, h, w).transpose(1, 2) + x


class Resample(nn.Module):
    """Spatial 2x down/up-sampling per frame, optionally with 2x temporal down/up-sampling.

    mode: 'downsample2d' | 'downsample3d' | 'upsample2d' | 'upsample3d'. Keys: `resample.1`
    (the per-frame conv; index 0 was the parameter-free pad / upsample) and `time_conv`.
    """

    MODES = ("downsample2d", "downsample3d", "upsample2d", "upsample3d")

    def __init__(self, ops, dim: int, mode: str):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"Resample mode {mode!r} is not one of {self.MODES}")
        self.ops, self.mode = ops, mode
        self.up = mode.startswith("up")
        if self.up:  # nearest 2x then conv3x3 halving the channels
            self.resample = nn.ModuleDict({"1": Conv2d(ops, dim, dim // 2, 3, padding=1)})
        else:  # pad right/bottom by 1 then strided conv3x3
            self.resample = nn.ModuleDict({"1": Conv2d(ops, dim, dim, 3, stride=2)})
        self.time_conv = None
        if mode == "upsample3d":  # causal conv to 2x channels = two output frames per input frame
            self.time_conv = CausalConv3d(ops, dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":  # stride-2 conv over (previous frame, current frames)
            self.time_conv = CausalConv3d(ops, dim, dim, (3, 1, 1), stride=(2, 1, 1))
        self.needs_cache_slot = mode == "downsample3d"
        self.slot: int | None = None

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._time_upsample(x, cache)
        x = self._per_frame(x)
        if self.mode == "downsample3d":
            x = self._time_downsample(x, cache)
        return x

    def _per_frame(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = x.transpose(1, 2).reshape(b * t, c, h, w)
        y = self.ops.vae_upsample2x(y) if self.up else F.pad(y, (0, 1, 0, 1))
        y = self.resample["1"](y)
        return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)

    def _time_upsample(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, C, 2T, H, W], except on the stream's first chunk (unchanged).

        The first chunk (the first latent frame) is passed through, and the time conv's history
        starts empty *after* it: an empty 0-frame history marks "first chunk seen".
        """
        conv = self.time_conv
        if cache.slots[conv.slot] is None:
            cache.slots[conv.slot] = x[:, :, :0].clone()
            return x
        b, c, t, h, w = x.shape
        y = conv(x, cache).reshape(b, 2, c, t, h, w)
        # Channel halves are the even / odd output frames: interleave them in time.
        return y.permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)

    def _time_downsample(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, C, T/2, H, W] using the last frame of the previous chunk.

        The stream's first chunk (one frame) is passed through unchanged.
        """
        past = cache.slots[self.slot]
        cache.slots[self.slot] = x[:, :, -1:].clone()
        if past is None:
            return x
        return self.time_conv(torch.cat([past, x], dim=2))
