"""Reference image in: load, choose the generation size, resize + centre-crop + normalise.

Reproduces the published Live Avatar preprocessing (``causal_s2v_pipeline.py``:
``get_gen_size`` -> ``get_size_less_than_area``; then ``transforms.Resize(min(H, W))``,
``transforms.CenterCrop((H, W))``, ``ToTensor()``, ``* 2 - 1``) without torchvision:

* The published code opens the file with ``Image.open(path).convert('RGB')``. We do the same,
  so an alpha channel is **dropped** (not composited), EXIF orientation is **not** applied and
  palette / grey images become RGB exactly as Pillow converts them.
* ``transforms.Resize(int)`` on a PIL image calls ``PIL.Image.resize`` with ``BILINEAR``
  (Pillow's bilinear is antialiased: its support widens with the downscale factor). We call the
  same Pillow function with the same filter and the same output size rule, so the resized pixels
  are bit-identical to the published ones for the same Pillow version.
* ``CenterCrop`` pads with 0 (black) where the crop is larger than the image, left/top getting
  ``(crop - size) // 2`` and right/bottom the rest, then crops at
  ``round((size - crop) / 2)`` (Python's round-half-to-even). After ``* 2 - 1`` padded pixels
  are exactly -1.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "ImageError",
    "MIN_SIDE",
    "SUPPORTED_EXTENSIONS",
    "load_image",
    "output_size",
    "prepare_reference",
]

#: Smallest accepted image side in pixels. Below one 64-px generation tile the portrait
#: carries too little detail for the model, and such inputs are almost always mistakes.
MIN_SIDE = 64

#: File types ``load_image`` accepts (lower-case, with the dot).
SUPPORTED_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

#: The published generation sizes are multiples of this (VAE stride 8 x DiT patch 2 x 4).
DIVISOR = 64

ImageInput = Union[str, Path, Image.Image, np.ndarray]


class ImageError(ValueError):
    """The reference image cannot be used; the message names the problem."""


def load_image(image: ImageInput) -> np.ndarray:
    """Load a reference image as RGB.

    Args:
        image: a path (``str`` / ``Path``) to a PNG, JPEG, WebP or BMP file; a ``PIL.Image`` of
            any mode; or a ``uint8`` numpy array ``[H, W, 3]`` (RGB), ``[H, W, 4]`` (RGBA),
            ``[H, W, 1]`` or ``[H, W]`` (grey).

    Returns:
        ``np.ndarray`` uint8 ``[H, W, 3]``, C-contiguous, never aliasing the input array.

    Alpha is dropped, not composited (what ``PIL.Image.convert('RGB')`` does in the published
    code); grey is replicated to three channels.

    Raises:
        ImageError: missing / empty / unreadable / unsupported file, wrong array dtype or shape,
            or an image whose smaller side is below ``MIN_SIDE`` pixels.
    """
    if isinstance(image, (str, Path)):
        rgb = _load_file(Path(image))
    elif isinstance(image, Image.Image):
        rgb = np.asarray(image.convert("RGB"))
    elif isinstance(image, np.ndarray):
        rgb = _from_array(image)
    else:
        raise ImageError(
            f"unsupported image input of type {type(image).__name__}; "
            "pass a file path, a PIL.Image or a uint8 numpy array")
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"image is too small: {w}x{h} (W x H); the smaller side must be at least {MIN_SIDE} px")
    return np.ascontiguousarray(rgb, dtype=np.uint8).copy()


def _load_file(path: Path) -> np.ndarray:
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise ImageError(
            f"unsupported image file type {path.suffix or '(no extension)'!r} for {path}; "
            f"supported: {', '.join(SUPPORTED_EXTENSIONS)}")
    if not path.exists():
        raise ImageError(f"image file not found: {path}")
    if not path.is_file():
        raise ImageError(f"image path is not a file: {path}")
    if path.stat().st_size == 0:
        raise ImageError(f"image file is empty (0 bytes): {path}")
    try:
        with Image.open(path) as im:
            # convert() forces the full decode, so truncated data fails here, not later.
            return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError as e:
        raise ImageError(f"cannot read image file {path}: not a valid image ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"cannot read image file {path}: corrupt or truncated ({e})") from e


def _from_array(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint8:
        raise ImageError(f"image array must be uint8 (0..255), got dtype {a.dtype}")
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim == 3 and a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    if a.ndim == 3 and a.shape[2] == 3:
        return a
    if a.ndim == 3 and a.shape[2] == 4:
        return a[:, :, :3]  # drop alpha, as PIL's convert('RGB') does
    raise ImageError(
        f"image array must be [H, W, 3], [H, W, 4], [H, W, 1] or [H, W], got shape {tuple(a.shape)}")


def output_size(image_hw: tuple[int, int], max_area: int) -> tuple[int, int]:
    """Generation size for an image, exactly as the published ``get_size_less_than_area``.

    Args:
        image_hw: (height, width) of the reference image in pixels.
        max_area: pixel budget, e.g. ``704 * 384`` (single GPU) or ``720 * 400`` (multi GPU).

    Returns:
        (H, W), both multiples of 64 with ``H * W <= max_area``.

    The published rule: try scales ``s_i = s_max - (s_max - s_min) * i / 100`` for
    ``i = 0..99``; at each, take ``h = int(height * s)``, ``w = int(width * s)`` and round each
    **up** to a multiple of 64 (the published comments call this "padding"; no pixels are padded
    here, the image is later resized/cropped to the size); return the first that fits the
    area. ``s_max = 1`` if the image already fits the area (never upscales the first try),
    else ``sqrt(area / (height * width))``; ``s_min`` is 0.1, resp. the root of a quadratic
    (kept with its published ``b**2 - 2*a*c`` discriminant). If no scale fits, the fallback is
    ``floor64(sqrt(area * aspect))`` x ``floor64(sqrt(area / aspect))``, or the image size
    floored to 64 if that is not smaller than the image.

    Because of the round-up, the result depends on the aspect ratio and is not always the
    largest 64-multiple rectangle; with ``max_area = 704 * 384`` (270336):
    a 384x704 or 1080x1920 landscape -> (384, 704); a 1920x1080 portrait -> (704, 384);
    512x512 -> (512, 512); 1024x1024 -> (512, 512); 768x512 -> (576, 384).

    Raises:
        ValueError: non-positive image size, or ``max_area < 64 * 64``.
    """
    height, width = int(image_hw[0]), int(image_hw[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got (H, W) = ({height}, {width})")
    target_area = int(max_area)
    if target_area < DIVISOR * DIVISOR:
        raise ValueError(f"max_area must be at least {DIVISOR}*{DIVISOR} = {DIVISOR * DIVISOR}, got {max_area}")

    if height * width <= target_area:
        min_scale, max_scale = 0.1, 1.0
    else:
        d = DIVISOR - 1
        a = height * width
        b = d * (height + width)
        c = d ** 2 - target_area
        # Published formula, including its 2*a*c (not 4*a*c): it only sets the search range.
        min_scale = (-b + math.sqrt(b ** 2 - 2 * a * c)) / (2 * a)
        max_scale = math.sqrt(target_area / (height * width))

    for i in range(100):
        scale = max_scale - (max_scale - min_scale) * i / 100
        h, w = int(height * scale), int(width * scale)
        h += (DIVISOR - h % DIVISOR) % DIVISOR
        w += (DIVISOR - w % DIVISOR) % DIVISOR
        if h * w <= target_area:
            return _checked(h, w, image_hw, max_area)

    aspect = width / height
    w = int((target_area * aspect) ** 0.5 // DIVISOR * DIVISOR)
    h = int((target_area / aspect) ** 0.5 // DIVISOR * DIVISOR)
    if w >= width or h >= height:
        w = int(width // DIVISOR * DIVISOR)
        h = int(height // DIVISOR * DIVISOR)
    return _checked(h, w, image_hw, max_area)


def _checked(h: int, w: int, image_hw, max_area) -> tuple[int, int]:
    # The published fallback can return a 0 side for extreme aspect ratios; fail loudly instead.
    if h < DIVISOR or w < DIVISOR:
        raise ValueError(
            f"no usable generation size for an image of (H, W) = {tuple(image_hw)} within area "
            f"{max_area}: the aspect ratio is too extreme (got {h}x{w})")
    return h, w


def prepare_reference(image_uint8: np.ndarray, size_hw: tuple[int, int]) -> torch.Tensor:
    """Resize (short side fits) + centre-crop (zero-pad) + normalise, as published.

    Args:
        image_uint8: ``uint8 [h, w, 3]`` RGB (e.g. from :func:`load_image`).
        size_hw: target (H, W), normally from :func:`output_size`.

    Returns:
        ``torch.float32 [3, H, W]`` in ``[-1, 1]``; zero-padded (black) areas are exactly -1.

    Steps (published ``Resize(min(H, W))`` -> ``CenterCrop((H, W))`` -> ``ToTensor`` -> ``*2-1``):
      1. scale so the image's *shorter* side equals ``min(H, W)``; the longer side becomes
         ``int(min(H, W) * long / short)`` (truncated). Filter: Pillow ``BILINEAR`` with its
         built-in antialiasing, the filter torchvision uses for PIL input, so identical.
         Skipped when the size is already right (torchvision returns the image untouched).
      2. if the crop is larger than the resized image along a side, pad that side with zeros
         (``(crop - size) // 2`` before, the rest after), then crop at
         ``round((size - crop) / 2)`` (round half to even, like torchvision).
      3. ``x / 255`` in float32, then ``* 2 - 1``.
    """
    rgb = _from_array(np.asarray(image_uint8))
    H, W = int(size_hw[0]), int(size_hw[1])
    if H <= 0 or W <= 0:
        raise ValueError(f"size_hw must be positive, got {size_hw}")
    h, w = rgb.shape[:2]

    short_target = min(H, W)
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = short_target, int(short_target * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_h, new_w) != (h, w):
        rgb = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BILINEAR))
    h, w = new_h, new_w

    # Zero-pad where the crop is bigger than the image (torchvision's split: floor before).
    pad_t = (H - h) // 2 if H > h else 0
    pad_b = (H - h + 1) // 2 if H > h else 0
    pad_l = (W - w) // 2 if W > w else 0
    pad_r = (W - w + 1) // 2 if W > w else 0
    if pad_t or pad_b or pad_l or pad_r:
        rgb = np.pad(rgb, ((pad_t, pad_b), (pad_l, pad_r), (0, 0)))
        h, w = rgb.shape[:2]
    top = int(round((h - H) / 2.0))
    left = int(round((w - W) / 2.0))
    rgb = rgb[top:top + H, left:left + W]

    t = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).contiguous()  # PIL arrays are read-only
    # ToTensor divides in float32 by 255; keep the same op order for bit-identical values.
    return t.to(torch.float32).div(255) * 2 - 1.0
