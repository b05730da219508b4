"""Reference image: loading + errors, the published size rule, resize/centre-crop/normalise."""
from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from liveavatar_rt.io.image import ImageError, load_image, output_size, prepare_reference

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "example"
AREA_1GPU, AREA_MGPU = 704 * 384, 720 * 400


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- load_image


def test_load_png_jpeg_and_pil(tmp_path):
    a = _rgb(80, 96)
    (tmp_path / "a.png").write_bytes(_png_bytes(a))
    assert np.array_equal(load_image(tmp_path / "a.png"), a)
    assert np.array_equal(load_image(str(tmp_path / "a.png")), a)
    Image.fromarray(a).save(tmp_path / "a.JPG", format="JPEG")  # extension check is case-insensitive
    out = load_image(tmp_path / "a.JPG")
    assert out.shape == (80, 96, 3) and out.dtype == np.uint8
    assert np.array_equal(load_image(Image.fromarray(a)), a)


def test_array_input_is_copied():
    a = _rgb(64, 64)
    out = load_image(a)
    assert np.array_equal(out, a) and not np.shares_memory(out, a)


def test_rgba_alpha_is_dropped_not_composited(tmp_path):
    rgba = np.zeros((64, 70, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[..., 3] = 0  # fully transparent: compositing on white would give 255s
    expect = np.broadcast_to(np.array([10, 20, 30], np.uint8), (64, 70, 3))
    assert np.array_equal(load_image(rgba), expect)
    (tmp_path / "t.png").write_bytes(_png_bytes(rgba))
    assert np.array_equal(load_image(tmp_path / "t.png"), expect)
    assert np.array_equal(load_image(Image.fromarray(rgba, "RGBA")), expect)


def test_gray_replicated(tmp_path):
    g = np.arange(64 * 80, dtype=np.uint32).reshape(64, 80).astype(np.uint8)
    for src in (g, g[:, :, None], Image.fromarray(g, "L")):
        out = load_image(src)
        assert out.shape == (64, 80, 3)
        assert all(np.array_equal(out[..., c], g) for c in range(3))
    (tmp_path / "g.png").write_bytes(_png_bytes(g))
    assert np.array_equal(load_image(tmp_path / "g.png")[..., 1], g)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_empty_file(tmp_path):
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "e.png")


def test_corrupt_file(tmp_path):
    (tmp_path / "c.png").write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageError, match="cannot read"):
        load_image(tmp_path / "c.png")


def test_truncated_file(tmp_path):
    data = _png_bytes(_rgb(128, 128))
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cannot read"):
        load_image(tmp_path / "t.png")


@pytest.mark.parametrize("name", ["a.gif", "a.txt", "noext"])
def test_unsupported_extension(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"x")
    with pytest.raises(ImageError, match="unsupported image file type") as e:
        load_image(p)
    msg = str(e.value)
    assert (Path(name).suffix or "no extension") in msg and ".png" in msg and ".jpg" in msg


def test_directory_is_not_a_file(tmp_path):
    d = tmp_path / "dir.png"
    d.mkdir()
    with pytest.raises(ImageError, match="not a file"):
        load_image(d)


@pytest.mark.parametrize("arr, what", [
    (np.zeros((64, 64, 3), np.float32), "dtype float32"),
    (np.zeros((64, 64, 3), np.uint16), "dtype uint16"),
    (np.zeros((64, 64, 2), np.uint8), r"shape \(64, 64, 2\)"),
    (np.zeros((1, 64, 64, 3), np.uint8), r"shape \(1, 64, 64, 3\)"),
    (np.zeros(64, np.uint8), r"shape \(64,\)"),
])
def test_bad_arrays(arr, what):
    with pytest.raises(ImageError, match=what):
        load_image(arr)


def test_bad_input_type():
    with pytest.raises(ImageError, match="list"):
        load_image([[0, 0, 0]])


@pytest.mark.parametrize("hw", [(63, 200), (200, 63), (10, 10)])
def test_too_small(tmp_path, hw):
    h, w = hw
    with pytest.raises(ImageError, match=f"too small: {w}x{h}"):
        load_image(np.zeros((h, w, 3), np.uint8))
    (tmp_path / "s.png").write_bytes(_png_bytes(np.zeros((h, w, 3), np.uint8)))
    with pytest.raises(ImageError, match="too small"):
        load_image(tmp_path / "s.png")
    load_image(np.zeros((64, 64, 3), np.uint8))  # the minimum itself is fine


def test_example_portrait():
    img = load_image(ASSETS / "portrait.png")
    assert img.shape == (512, 512, 3)
    assert output_size(img.shape[:2], AREA_1GPU) == (512, 512)


# --------------------------------------------------------------------------- output_size

# (image H, W) -> size at 704*384 and at 720*400, as the published get_size_less_than_area gives.
CASES = [
    ((384, 704), (384, 704), (384, 704)),     # exactly the budget, landscape
    ((704, 384), (704, 384), (704, 384)),     # portrait
    ((1080, 1920), (384, 704), (384, 704)),   # 16:9 video frame
    ((1920, 1080), (704, 384), (704, 384)),   # 9:16 phone portrait
    ((720, 1280), (384, 704), (384, 704)),
    ((512, 512), (512, 512), (512, 512)),     # fits already: kept, not stretched to 384x704
    ((1024, 1024), (512, 512), (512, 512)),
    ((768, 512), (576, 384), (640, 448)),     # 3:2 portrait
    ((512, 768), (384, 576), (448, 640)),
    ((600, 800), (448, 576), (448, 640)),     # 4:3: round-up gives different shapes per budget
    ((64, 64), (64, 64), (64, 64)),
    ((100, 3000), (128, 2112), (128, 2240)),  # odd aspect ratios
    ((3000, 100), (2112, 128), (2240, 128)),
    ((64, 5000), (64, 4224), (64, 4480)),     # falls through to the published fallback branch
]


@pytest.mark.parametrize("hw, one_gpu, multi_gpu", CASES)
def test_output_size_published_values(hw, one_gpu, multi_gpu):
    assert output_size(hw, AREA_1GPU) == one_gpu
    assert output_size(hw, AREA_MGPU) == multi_gpu


def test_output_size_invariants():
    rnd = random.Random(0)
    for _ in range(2000):
        hw = (rnd.randint(64, 4000), rnd.randint(64, 4000))
        area = rnd.choice([AREA_1GPU, AREA_MGPU, 688 * 368, 384 * 256, 1280 * 720])
        H, W = output_size(hw, area)
        assert H % 64 == 0 and W % 64 == 0 and H >= 64 and W >= 64
        assert H * W <= area
        # Orientation follows the image (a portrait never becomes landscape).
        if hw[0] > 1.2 * hw[1]:
            assert H >= W
        if hw[1] > 1.2 * hw[0]:
            assert W >= H


def test_output_size_errors():
    with pytest.raises(ValueError, match="max_area"):
        output_size((512, 512), 63 * 64)
    with pytest.raises(ValueError, match="positive"):
        output_size((0, 512), AREA_1GPU)
    with pytest.raises(ValueError, match="aspect ratio is too extreme"):
        output_size((64, 300000), AREA_1GPU)


# --------------------------------------------------------------------------- prepare_reference


def _coded(h: int, w: int) -> np.ndarray:
    """R = column index, G = row index, B = 200 (so crops can be located exactly)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.arange(w)[None, :]
    a[..., 1] = np.arange(h)[:, None]
    a[..., 2] = 200
    return a


def test_normalisation_exact_when_no_resize():
    a = _rgb(64, 128)
    t = prepare_reference(a, (64, 128))
    assert t.shape == (3, 64, 128) and t.dtype == torch.float32
    expect = torch.from_numpy(a).permute(2, 0, 1).float() / 255 * 2 - 1
    assert torch.equal(t, expect)
    assert t.min() >= -1 and t.max() <= 1


@pytest.mark.parametrize("w, left", [(256, 64), (129, 0), (131, 2), (133, 2), (135, 4)])
def test_centre_crop_offset(w, left):
    # Short side already equals min(H, W) = 128: no resize; crop left = round((w - 128) / 2)
    # with Python's half-to-even rounding (129 -> 0, 131 -> 2, 133 -> 2), like torchvision.
    t = prepare_reference(_coded(128, w), (128, 128))
    cols = torch.round((t[0, 0] + 1) / 2 * 255).to(torch.int64)
    assert torch.equal(cols, torch.arange(left, left + 128))
    rows = torch.round((t[1, :, 0] + 1) / 2 * 255).to(torch.int64)
    assert torch.equal(rows, torch.arange(128))


def test_zero_pad_where_crop_is_wider():
    # A 64x64 white image into a 64x128 crop: short side 64 stays, 32 black columns each side.
    t = prepare_reference(np.full((64, 64, 3), 255, np.uint8), (64, 128))
    assert t.shape == (3, 64, 128)
    assert torch.all(t[:, :, :32] == -1) and torch.all(t[:, :, 96:] == -1)
    assert torch.all(t[:, :, 32:96] == 1)


def test_zero_pad_odd_split():
    # 65 px wide into 128: pad 63 = 31 left + 32 right (torchvision: floor before, rest after).
    t = prepare_reference(np.full((64, 65, 3), 255, np.uint8), (64, 128))
    white = (t[0, 0] == 1).nonzero().flatten()
    assert white[0].item() == 31 and white[-1].item() == 31 + 64


def test_pad_one_side_crop_the_other():
    # Portrait crop of a landscape image: short side (height 64) -> min(H, W) = 64, width 256
    # is cropped to 64 around the centre, height 64 is padded to 128 with 32 black rows each side.
    t = prepare_reference(_coded(64, 256), (128, 64))
    assert torch.all(t[:, :32] == -1) and torch.all(t[:, 96:] == -1)
    cols = torch.round((t[0, 64] + 1) / 2 * 255).to(torch.int64)
    assert torch.equal(cols, torch.arange(96, 160))


def test_resize_short_side_matches_pil_bilinear():
    a = _rgb(100, 333, seed=3)
    t = prepare_reference(a, (64, 128))
    # Resize(64): short side 100 -> 64, long side int(64 * 333 / 100) = 213; then crop width 128
    # at round((213 - 128) / 2) = 42.
    resized = np.asarray(Image.fromarray(a).resize((213, 64), Image.Resampling.BILINEAR))
    expect = torch.from_numpy(resized[:, 42:170].copy()).permute(2, 0, 1).float() / 255 * 2 - 1
    assert torch.equal(t, expect)


def test_prepare_portrait_asset():
    img = load_image(ASSETS / "portrait.png")
    t = prepare_reference(img, (384, 704))  # square image into landscape: pads left/right
    assert t.shape == (3, 384, 704)
    assert torch.all(t[:, :, :160] == -1) and torch.all(t[:, :, -160:] == -1)
    assert t[:, :, 160:-160].std() > 0.1
