"""Per-image session conditioning, computed once and reused by every session on that image.

A session on a portrait needs (published multi-GPU conditioning):
    ref_latent [1, 16, 1, h, w]   the VAE encoding of the image alone
    motion     [1, 16, 19, h, w]  the VAE encoding of the image repeated 73 times
    a streaming VAE decoder warmed on motion[:, :, :7] (its output is dropped)
Together these are most of a session's setup time (tiny preset: ~1.3 of ~2.2 s on one core)
and depend only on the prepared image and the weights, so a service that opens many sessions
on the same avatar pays them once. Exact: a cached entry is the same tensors the session would
compute, and the warmed decoder is forked (its cache tensors are replaced, never written in
place, by the decoder layers), so sessions never see each other's decoding.

Keyed by the SHA-256 of the prepared reference [3, H, W] (so any image source that prepares
to the same pixels hits), its size, and the compute dtype. LRU, `size` entries (0: off).
After changing the VAE weights in place, call `clear()`.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Conditioning:
    ref_latent: torch.Tensor  # [1, 16, 1, h, w] compute dtype
    motion: torch.Tensor  # [1, 16, 19, h, w] compute dtype
    warm_decoder: object  # VAEStreamDecoder after the warm-up: fork() it, never decode with it


def compute_conditioning(vae, ref: torch.Tensor, motion_frames: int, dtype: torch.dtype) -> Conditioning:
    """ref [3, H, W] in [-1, 1] -> the session's conditioning, computed (no cache)."""
    ref_latent = vae.encode(ref[:, None]).to(dtype)[None]
    motion = vae.encode(ref[:, None].expand(-1, motion_frames, -1, -1)).to(dtype)[None]
    decoder = vae.new_stream()
    decoder.decode(motion[0, :, :7].float())  # published warm-up of the causal cache; output dropped
    return Conditioning(ref_latent, motion, decoder)


class ConditioningCache:
    def __init__(self, size: int = 4):
        self.size = size
        self._entries: OrderedDict[tuple, Conditioning] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def key(ref: torch.Tensor, dtype: torch.dtype) -> tuple:
        digest = hashlib.sha256(ref.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()
        return digest, tuple(ref.shape), str(dtype)

    def get(self, vae, ref: torch.Tensor, motion_frames: int, dtype: torch.dtype) -> Conditioning:
        """The conditioning of `ref` [3, H, W], from the cache or computed (and then cached)."""
        if self.size <= 0:
            return compute_conditioning(vae, ref, motion_frames, dtype)
        k = (*self.key(ref, dtype), motion_frames)
        with self._lock:
            hit = self._entries.get(k)
            if hit is not None:
                self._entries.move_to_end(k)
                self.hits += 1
                return hit
            self.misses += 1
        cond = compute_conditioning(vae, ref, motion_frames, dtype)  # outside the lock: sessions on other images go on
        with self._lock:
            self._entries[k] = cond
            self._entries.move_to_end(k)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return cond

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
