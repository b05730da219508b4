"""Training data access: the generated clips (recipes.tiny.dataset) and the per-clip tensors
the DiT stages train on (latents, conditioning latents, audio features), made by `prep`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def open_dataset(root: str | Path):
    from recipes.tiny.dataset import ClipDataset

    ds = ClipDataset(root)
    if len(ds) == 0:
        raise FileNotFoundError(f"no clips under {root}: run `python -m recipes.tiny.generate --out {root}` first")
    return ds


def _field(item, name: str):
    return item[name] if isinstance(item, dict) else getattr(item, name)


def frames_of(ds, i: int) -> np.ndarray:
    """uint8 [T, H, W, 3] frames of clip i."""
    return _field(ds[i], "frames")


def clip_arrays(ds, i: int) -> dict[str, np.ndarray]:
    item = ds[i]
    return {k: _field(item, k) for k in ("frames", "audio", "mouth", "reference", "mouth_box")}


class Prepped:
    """The prepped training tensors (`prep.py` writes `<run>/prep/data_<start>.pt`):
    x0 [N, 16, Fc, h, w] clean normalised latents of frames 1 .. 4Fc, ref [N, 16, 1, h, w],
    motion [N, 16, 19, h, w], feats [N, Fc/3, layers, dim, 12] per-block audio features (fp16),
    mouth [N, 4Fc] ground-truth mouth opening of frames 1 .. 4Fc, box [N, 4] the normalised
    mouth box (x0, y0, x1, y1) covering the mouth over the whole clip (absent in old preps)."""

    def __init__(self, path: str | Path):
        """path: the prep folder (every `data_*.pt` in it, concatenated) or one file."""
        path = Path(path)
        files = sorted(path.glob("data_*.pt")) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"no prepped data in {path}: run `python -m recipes.tiny.train.prep` first")
        parts = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
        d = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        self.x0, self.ref, self.motion = d["x0"].float(), d["ref"].float(), d["motion"].float()
        self.feats, self.mouth, self.box = d["feats"], d["mouth"], d.get("box")
        self.n, self.blocks = self.x0.shape[0], self.feats.shape[1]

    def window(self, idx: list[int], first_block: list[int], nblocks: int) -> dict[str, torch.Tensor]:
        """A batch of windows of `nblocks` blocks starting at each sample's `first_block`."""
        F = 3
        xs, fs = [], []
        for i, b in zip(idx, first_block):
            xs.append(self.x0[i, :, b * F:(b + nblocks) * F])
            fs.append(self.feats[i, b:b + nblocks].float())
        out = {"x0": torch.stack(xs), "feats": torch.stack(fs), "ref": self.ref[idx], "motion": self.motion[idx]}
        if self.box is not None:
            out["box"] = self.box[idx]
        return out

    def sample(self, rng: np.random.Generator, batch: int, nblocks: int) -> dict[str, torch.Tensor]:
        idx = rng.integers(0, self.n, batch).tolist()
        first = rng.integers(0, self.blocks - nblocks + 1, batch).tolist()
        return self.window(idx, first, nblocks)


def loss_weights(batch: dict, mouth_weight: float, hw: tuple[int, int]) -> torch.Tensor:
    """-> [B, 1, 1, h, w] per-latent-position loss weights: `mouth_weight` on the latent cells
    the clip's mouth box touches, 1 elsewhere (all ones without boxes). Lip sync lives in a
    few percent of the pixels; a plain mean lets the model spend its capacity elsewhere."""
    B = batch["x0"].shape[0]
    h, w = hw
    wts = torch.ones(B, 1, 1, h, w)
    if mouth_weight == 1.0 or "box" not in batch:
        return wts
    for b, (x0, y0, x1, y1) in enumerate(batch["box"].tolist()):
        r0, r1 = int(y0 * h), min(h, int(np.ceil(y1 * h)))
        c0, c1 = int(x0 * w), min(w, int(np.ceil(x1 * w)))
        wts[b, :, :, r0:r1, c0:c1] = mouth_weight
    return wts


def weighted_mse(err: torch.Tensor, wts: torch.Tensor) -> torch.Tensor:
    """Mean of err^2 weighted by `wts` (broadcast), normalised so all-ones weights give the mean."""
    return (err.square() * wts).mean() / wts.mean()
