"""Render an Identity with a head pose, mouth shape and eye closure (Pillow, flat shading).

    render(identity, pose, mouth, blink, size=128) -> uint8 [size, size, 3]
    FaceRenderer(identity, size).frame(pose, mouth, blink)   (same, reusing cached layers)

pose: (dx, dy, roll deg, scale, yaw) as in motion.POSE_FIELDS; mouth: (open, width) in [0, 1];
blink: 0 (open) .. 1 (shut).

Speed: the static parts are drawn once per renderer: the background + shoulders (RGB) and the
head without its moving features (hair, ears, face, hat: RGBA). Per frame only the features
(brows, eyes, nose, mouth, glasses) are drawn onto a copy of the head, which is box-reduced
from SS x the output size (anti-aliasing), moved by one bilinear affine warp and composited
(~1.5 ms per 128 px frame on an idle core).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .identity import Identity

SS = 2  # supersampling factor


def _background(idn: Identity, n: int) -> Image.Image:
    a, b = np.array(idn.bg_a, np.float64), np.array(idn.bg_b, np.float64)
    y, x = np.mgrid[0:n, 0:n] / n
    kind = idn.background
    if kind == "flat":
        t = np.zeros((n, n))
    elif kind == "gradient":
        t = y if idn.seed % 2 else (x + y) / 2
    elif kind == "radial":
        t = np.clip(np.hypot(x - 0.5, y - 0.4) * 1.6, 0, 1)
    elif kind == "stripes":
        period = 0.08 + 0.08 * ((idn.seed // 7) % 3)
        t = ((x + (y if idn.seed % 3 == 0 else 0)) / period % 1 < 0.5) * 0.35
    elif kind == "dots":
        p = 0.1
        t = (np.hypot((x % p) - p / 2, (y % p) - p / 2) < p * 0.22) * 0.4
    else:  # checker
        p = 0.125
        t = (((x // p) + (y // p)) % 2) * 0.25
    img = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
    return Image.fromarray(img.astype(np.uint8), "RGB")


def _body(d: ImageDraw.ImageDraw, idn: Identity, n: int):
    """Shoulders and neck: static (the head moves over them)."""
    s = n
    cx = idn.cx * s
    chin = (idn.cy + idn.face_ry) * s
    d.rounded_rectangle([cx - 0.42 * s, chin + 0.05 * s, cx + 0.42 * s, 1.3 * s],
                        radius=int(0.14 * s), fill=idn.shirt)
    nw = idn.face_rx * 0.5 * s
    d.rectangle([cx - nw, (idn.cy + 0.3 * idn.face_ry) * s, cx + nw, chin + 0.08 * s],
                fill=idn.skin_shade)
    d.polygon([(cx - nw * 1.4, chin + 0.05 * s), (cx, chin + 0.14 * s),
               (cx + nw * 1.4, chin + 0.05 * s)], fill=idn.shirt2)


def _head(idn: Identity, n: int) -> Image.Image:
    """Head without the moving features, RGBA on transparent."""
    img = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    s = n
    cx, cy, rx, ry = idn.cx * s, idn.cy * s, idn.face_rx * s, idn.face_ry * s
    top = cy - ry
    style, hair = idn.hair_style, idn.hair
    # hair behind the face
    if style == "long":
        d.rounded_rectangle([cx - rx * 1.18, top - 0.03 * s, cx + rx * 1.18, cy + ry * 1.05],
                            radius=int(rx * 0.7), fill=hair)
    elif style == "bob":
        d.rounded_rectangle([cx - rx * 1.15, top - 0.04 * s, cx + rx * 1.15, cy + ry * 0.45],
                            radius=int(rx * 0.6), fill=hair)
    elif style == "bun":
        d.ellipse([cx - rx * 0.45, top - rx * 0.75, cx + rx * 0.45, top + rx * 0.1], fill=hair)
    elif style == "curly":
        for k in range(11):
            a = math.pi * (0.95 + 1.1 * k / 10)
            px, py = cx + rx * 1.02 * math.cos(a), cy - ry * 0.2 + ry * 0.95 * math.sin(a)
            r = rx * 0.32
            d.ellipse([px - r, py - r, px + r, py + r], fill=hair)
    elif style == "spiky":
        pts = []
        for k in range(9):
            a = math.pi * (1.05 + 0.9 * k / 8)
            rr = ry * (1.22 if k % 2 == 0 else 0.95)
            pts.append((cx + rx * 1.05 * math.cos(a) * rr / ry, cy - 0.1 * ry + rr * math.sin(a)))
        d.polygon([(cx - rx, cy - 0.1 * ry)] + pts + [(cx + rx, cy - 0.1 * ry)], fill=hair)
    # ears
    ey, er = idn.eye_y * s + 0.02 * s, idn.ear_size * s
    for side in (-1, 1):
        ex = cx + side * rx * 0.97
        d.ellipse([ex - er * 0.6, ey - er, ex + er * 0.6, ey + er], fill=idn.skin_shade)
        if idn.earrings:
            r = 0.012 * s
            d.ellipse([ex - r, ey + er * 0.9, ex + r, ey + er * 0.9 + 2 * r],
                      fill=idn.earring_color)
    # face: an ellipse, squared off towards the jaw for higher `jaw`
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=idn.skin)
    jw = rx * (0.55 + 0.35 * idn.jaw)
    d.rounded_rectangle([cx - jw, cy, cx + jw, cy + ry * (0.9 + 0.08 * idn.jaw)],
                        radius=int(rx * (0.55 - 0.25 * idn.jaw)), fill=idn.skin)
    # hair on top of the forehead (fringe), above the brows
    brow_y = (idn.eye_y - idn.brow_raise) * s
    fringe = top + (brow_y - top) * (0.25 + 0.45 * idn.hairline)
    if style in ("short", "long", "bob", "side", "spiky", "curly"):
        d.chord([cx - rx * 1.06, top - 0.04 * s, cx + rx * 1.06, 2 * fringe - top + 0.04 * s],
                180, 360, fill=hair)
        if style == "side":
            d.polygon([(cx - rx * 0.9, fringe), (cx + rx * 0.3, fringe),
                       (cx - rx * 0.95, fringe + (brow_y - fringe) * 0.8)], fill=hair)
    elif style == "bun":
        d.chord([cx - rx * 1.02, top - 0.02 * s, cx + rx * 1.02, 2 * fringe - top],
                180, 360, fill=hair)
    # hats
    hc = idn.hat_color
    if idn.hat == "cap":
        d.chord([cx - rx * 1.08, top - 0.08 * s, cx + rx * 1.08, cy], 180, 360, fill=hc)
        d.rounded_rectangle([cx - rx * 1.1, cy - ry * 0.62, cx + rx * 0.2, cy - ry * 0.5],
                            radius=int(0.02 * s), fill=hc)
    elif idn.hat == "beanie":
        d.chord([cx - rx * 1.07, top - 0.1 * s, cx + rx * 1.07, cy + 0.1 * ry], 180, 360, fill=hc)
        d.rectangle([cx - rx * 1.07, cy - ry * 0.55, cx + rx * 1.07, cy - ry * 0.4],
                    fill=tuple(int(v * 0.8) for v in hc))
    elif idn.hat == "brim":
        d.ellipse([cx - rx * 1.6, cy - ry * 0.72, cx + rx * 1.6, cy - ry * 0.5], fill=hc)
        d.rounded_rectangle([cx - rx * 0.85, top - 0.12 * s, cx + rx * 0.85, cy - ry * 0.6],
                            radius=int(0.05 * s), fill=hc)
    return img


def _eye(d, idn: Identity, x: float, y: float, blink: float, s: int, look: float):
    rx, ry = idn.eye_rx * s, idn.eye_ry * s
    h = ry * (1.0 - blink)
    lid = tuple(int(v * 0.55) for v in idn.skin_shade)
    if h < 0.12 * ry:  # shut: a lid line
        d.line([(x - rx, y), (x + rx, y)], fill=lid, width=max(1, int(0.008 * s)))
        return
    d.ellipse([x - rx, y - h, x + rx, y + h], fill=(246, 246, 242))
    ir = ry * idn.iris_r
    ix = x + look * rx * 0.3
    ih = min(ir, h)
    d.ellipse([ix - ir, y - ih, ix + ir, y + ih], fill=idn.eye_color)
    pr = ir * 0.5
    ph = min(pr, h * 0.7)
    d.ellipse([ix - pr, y - ph, ix + pr, y + ph], fill=(15, 12, 12))
    if h > 0.6 * ry:
        g = ir * 0.25
        d.ellipse([ix + pr * 0.2, y - ph * 0.9, ix + pr * 0.2 + 2 * g, y - ph * 0.9 + 2 * g],
                  fill=(255, 255, 255))
    d.arc([x - rx, y - h, x + rx, y + h], 190, 350, fill=lid, width=max(1, int(0.007 * s)))


def mouth_geometry(idn: Identity, open_: float, width: float, s: float = 1.0):
    """Outer lip box of the mouth in head coordinates (before the pose warp):
    (x0, y0, x1, y1), plus the inner (dark) half-height. The upper lip stays near mouth_y and
    the lower lip drops with the jaw, so the opening grows downward, away from the nose."""
    hw = idn.mouth_hw * (0.75 + 0.5 * width) * s
    ih = idn.mouth_max_h * open_ * s
    lt = idn.lip_thick * s
    y = idn.mouth_y * s
    return (idn.cx * s - hw, y - 0.25 * ih - lt, idn.cx * s + hw, y + 0.75 * ih + lt), ih


def _mouth(d, idn: Identity, open_: float, width: float, s: int, shift: float):
    (x0, y0, x1, y1), ih = mouth_geometry(idn, open_, width, s)
    x0, x1 = x0 + shift, x1 + shift
    lt = idn.lip_thick * s
    yc = idn.mouth_y * s + 0.25 * ih
    if ih < 0.01 * s:  # closed: lips and the line between them
        d.ellipse([x0, yc - lt, x1, yc + lt], fill=idn.lip)
        line = tuple(int(v * 0.6) for v in idn.lip)
        d.line([(x0 + lt * 0.5, yc), (x1 - lt * 0.5, yc)], fill=line, width=max(1, int(s / 128)))
        return
    d.ellipse([x0, y0, x1, y1], fill=idn.lip)
    ix0, ix1 = x0 + lt * 0.7, x1 - lt * 0.7
    iy0, iy1 = yc - ih / 2, yc + ih / 2
    d.ellipse([ix0, iy0, ix1, iy1], fill=idn.interior)
    # upper teeth: a chord hanging from the top of the opening
    tw = (ix1 - ix0) * 0.3
    th = min(ih * 0.28, 0.02 * s)
    d.chord([idn.cx * s + shift - tw, iy0 - th, idn.cx * s + shift + tw, iy0 + th], 0, 180,
            fill=idn.teeth)


def _features(d, idn: Identity, mouth, blink: float, yaw: float, s: int):
    shift = yaw * 0.035 * s  # inner features move sideways with the head turn
    for side in (-1, 1):
        x = idn.cx * s + side * idn.eye_dx * s + shift
        y = idn.eye_y * s
        by = y - idn.brow_raise * s + blink * 0.006 * s
        t = idn.brow_tilt * s * side
        d.line([(x - idn.eye_rx * s * 1.1, by + t), (x + idn.eye_rx * s * 1.1, by - t)],
               fill=idn.brow_color, width=max(1, int(idn.brow_thick * s)))
        _eye(d, idn, x, y, blink, s, yaw)
    nx = idn.cx * s + shift * 1.5
    ny0, ny1 = idn.eye_y * s + 0.02 * s, idn.eye_y * s + idn.nose_len * s
    nose = tuple(int(v * 0.8) for v in idn.skin_shade)
    w = max(1, int(0.008 * s))
    if idn.nose_style == 0:
        d.line([(nx, ny0), (nx - 0.015 * s, ny1), (nx + 0.01 * s, ny1)], fill=nose, width=w)
    elif idn.nose_style == 1:
        r = 0.025 * s
        d.ellipse([nx - r, ny1 - r * 1.2, nx + r, ny1 + r * 0.6], fill=idn.skin_shade)
    for side in (-1, 1):
        r = 0.008 * s
        px = nx + side * 0.017 * s
        d.ellipse([px - r, ny1 - r * 0.5, px + r, ny1 + r * 0.8], fill=nose)
    _mouth(d, idn, float(mouth[0]), float(mouth[1]), s, shift)
    if idn.glasses:
        gw = max(1, int(0.01 * s))
        for side in (-1, 1):
            x = idn.cx * s + side * idn.eye_dx * s + shift
            r = idn.eye_rx * s * 1.45
            box = [x - r, idn.eye_y * s - r * 0.8, x + r, idn.eye_y * s + r * 0.8]
            if idn.glasses == "round":
                d.ellipse(box, outline=idn.glasses_color, width=gw)
            else:
                d.rounded_rectangle(box, radius=int(r * 0.25), outline=idn.glasses_color,
                                    width=gw)
        inner = idn.eye_dx * s - idn.eye_rx * s * 1.45
        d.line([(idn.cx * s + shift - inner, idn.eye_y * s),
                (idn.cx * s + shift + inner, idn.eye_y * s)], fill=idn.glasses_color, width=gw)


def pose_matrix(idn: Identity, pose, s: float = 1.0) -> np.ndarray:
    """Forward 2x3 affine (head coords -> image coords, pixels of an s-sized image): rotate by
    roll and scale about the neck, then translate."""
    dx, dy, roll, scale = (float(v) for v in pose[:4])
    px, py = idn.cx * s, (idn.cy + 0.8 * idn.face_ry) * s  # pivot near the chin / neck
    c, sn = math.cos(math.radians(roll)) * scale, math.sin(math.radians(roll)) * scale
    return np.array([[c, -sn, px - c * px + sn * py + dx * s],
                     [sn, c, py - sn * px - c * py + dy * s]])


class FaceRenderer:
    """Cached static layers for one identity at one output size."""

    def __init__(self, identity: Identity, size: int = 128):
        if size < 32:
            raise ValueError(f"size must be >= 32 pixels, got {size}")
        self.idn, self.size, self.n = identity, int(size), int(size) * SS
        bg = _background(identity, self.n)
        _body(ImageDraw.Draw(bg), identity, self.n)
        self.bg = bg.reduce(SS).convert("RGBA")
        self.head = _head(identity, self.n)

    def frame(self, pose, mouth, blink: float = 0.0) -> np.ndarray:
        """-> uint8 [size, size, 3]."""
        pose = np.asarray(pose, np.float64)
        if pose.shape != (5,):
            raise ValueError(f"pose must be (dx, dy, roll, scale, yaw), got shape {pose.shape}")
        head = self.head.copy()
        _features(ImageDraw.Draw(head), self.idn, mouth, float(blink), float(pose[4]), self.n)
        # Box-reduce first (the anti-aliasing), then warp at the output size: 4x fewer pixels
        # through the warp, which dominates the cost. Premultiplied alpha ("RGBa") so that
        # averaging with transparent pixels does not darken the head's outline.
        head = head.convert("RGBa").reduce(SS)
        m = np.vstack([pose_matrix(self.idn, pose, self.size), [0, 0, 1]])
        inv = np.linalg.inv(m)[:2].ravel()
        head = head.transform((self.size, self.size), Image.AFFINE, tuple(inv), Image.BILINEAR)
        out = Image.alpha_composite(self.bg, head.convert("RGBA")).convert("RGB")
        return np.asarray(out)


@lru_cache(maxsize=4)
def _renderer(identity: Identity, size: int) -> FaceRenderer:
    return FaceRenderer(identity, size)


def render(identity: Identity, pose, mouth, blink: float = 0.0, size: int = 128) -> np.ndarray:
    """One frame -> uint8 [size, size, 3] (see module doc)."""
    return _renderer(identity, int(size)).frame(pose, mouth, blink)
