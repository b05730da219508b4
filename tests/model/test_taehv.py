"""TAEHV-layout autoencoder (liveavatar_rt/model/taehv.py) on random weights: the published key
layout, streaming decode == whole-clip decode, frames per block, encode shapes, loading."""
from __future__ import annotations

import pytest
import torch

from liveavatar_rt.io.vae_loading import VAECheckpointError
from liveavatar_rt.model.taehv import TAEW2_1, TAEHV, TAEHVConfig, load_state_dict_checked, load_taehv

TINY = TAEHVConfig(encoder_width=8, decoder_widths=(16, 12, 8, 8))


def published_keys(lat: int = 16, enc: int = 64, dec=(256, 128, 64, 64)) -> dict[str, tuple[int, ...]]:
    """The state dict of madebyollin/taehv's `TAEHV` (default flags, patch size 1), written out
    from its layer list: encoder conv/ReLU, 3 x (TPool, stride-2 conv, 3 MemBlocks), conv;
    decoder Clamp, conv, ReLU, 3 x (3 MemBlocks, Upsample, TGrow, conv), ReLU, conv."""
    keys: dict[str, tuple[int, ...]] = {}

    def conv(name, n_in, n_out, bias=True, k=3):
        keys[f"{name}.weight"] = (n_out, n_in, k, k)
        if bias:
            keys[f"{name}.bias"] = (n_out,)

    def memblock(name, n):
        conv(f"{name}.conv.0", 2 * n, n)
        conv(f"{name}.conv.2", n, n)
        conv(f"{name}.conv.4", n, n)

    conv("encoder.0", 3, enc)
    for i, stride in zip((2, 7, 12), (2, 2, 1)):
        conv(f"encoder.{i}.conv", enc * stride, enc, bias=False, k=1)
        conv(f"encoder.{i + 1}", enc, enc, bias=False)
        for j in range(3):
            memblock(f"encoder.{i + 2 + j}", enc)
    conv("encoder.17", enc, lat)
    conv("decoder.1", lat, dec[0])
    for s, (i, stride) in enumerate(zip((3, 9, 15), (1, 2, 2))):
        for j in range(3):
            memblock(f"decoder.{i + j}", dec[s])
        conv(f"decoder.{i + 4}.conv", dec[s], dec[s] * stride, bias=False, k=1)
        conv(f"decoder.{i + 5}", dec[s], dec[s + 1], bias=False)
    conv("decoder.22", dec[3], 3)
    return keys


def test_taew2_1_key_names_and_shapes():
    got = {k: tuple(v.shape) for k, v in TAEHV(TAEW2_1, device="meta").state_dict().items()}
    assert got == published_keys()
    cfg = TAEW2_1
    assert (cfg.latent_channels, cfg.space_factor, cfg.t_downscale, cfg.t_upscale, cfg.frames_to_trim) == (16, 8, 4, 4, 3)


def test_narrow_widths_keep_the_key_names():
    got = {k: tuple(v.shape) for k, v in TAEHV(TINY, device="meta").state_dict().items()}
    assert got == published_keys(enc=8, dec=(16, 12, 8, 8))


@pytest.fixture(scope="module")
def taew_f64():
    return TAEHV(TAEW2_1, dtype=torch.float64).init_random_(0).eval()


def _stream(model, z, sizes):
    s, out, i = model.new_stream(), [], 0
    for n in sizes:
        out.append(s.decode(z[:, i:i + n]))
        i += n
    return out


def test_stream_equals_whole_clip_bit_for_bit_in_fp64(taew_f64):
    z = torch.randn(16, 7, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    whole = taew_f64.decode(z)
    assert whole.shape == (3, 4 * 7 - 3, 32, 32) and whole.std() > 0.1
    for sizes in ((3, 3, 1), (1,) * 7, (2, 5)):
        assert torch.equal(torch.cat(_stream(taew_f64, z, sizes), 1), whole), sizes


def test_stream_in_fp32_within_noise_of_whole_clip(taew_f64):
    """fp32 convs round differently with the batch size (frames per call), so streaming and
    whole-clip fp32 decodes differ by fp32 noise: each is as close to the fp64 decode as the
    other (within 2x + 1e-5)."""
    z = torch.randn(16, 7, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = taew_f64.decode(z)
    m32 = TAEHV(TAEW2_1).init_random_(0).eval()
    whole = m32.decode(z.float())
    stream = torch.cat(_stream(m32, z.float(), (3, 3, 1)), 1)
    err_whole = (whole.double() - ref).abs().max().item()
    assert (stream.double() - ref).abs().max().item() <= 2 * err_whole + 1e-5


def test_frames_per_12_frame_block():
    m = TAEHV(TINY).init_random_(0).eval()
    s = m.new_stream()
    assert s.first_decode
    shapes = [tuple(s.decode(torch.randn(16, 3, 16, 16)).shape) for _ in range(3)]
    assert shapes == [(3, 9, 128, 128), (3, 12, 128, 128), (3, 12, 128, 128)]
    assert not s.first_decode
    s.reset()
    assert s.decode(torch.randn(16, 3, 16, 16)).shape[1] == 9


def test_fork_continues_independently():
    m = TAEHV(TINY, dtype=torch.float64).init_random_(3).eval()
    z = torch.randn(16, 6, 4, 4, dtype=torch.float64)
    a = m.new_stream()
    a.decode(z[:, :3])
    b = a.fork()
    ya = a.decode(z[:, 3:])
    assert torch.equal(b.decode(z[:, 3:]), ya)
    assert torch.equal(b.decode(z[:, :1]), a.decode(z[:, :1]))


def test_decode_is_causal():
    m = TAEHV(TINY, dtype=torch.float64).init_random_(4).eval()
    z = torch.randn(16, 6, 4, 4, dtype=torch.float64)
    z2 = z.clone()
    z2[:, 4] += 1
    a, b = m.decode(z), m.decode(z2)
    first = 4 * 4 - 3  # latent 4 stands for frames 13..16
    assert torch.equal(a[:, :first], b[:, :first]) and not torch.equal(a[:, first:first + 4], b[:, first:first + 4])


def test_encode_shapes_and_streaming_encoder():
    m = TAEHV(TINY, dtype=torch.float64).init_random_(5).eval()
    video = torch.rand(3, 17, 32, 48, dtype=torch.float64) * 2 - 1
    z = m.encode(video)
    assert z.shape == (16, 5, 4, 6)
    assert m.decode(z).shape == (3, 17, 32, 48)
    x = torch.rand(1, 3, 12, 32, 32, dtype=torch.float64)
    whole, _ = m.encode_raw(x)
    mem, parts = None, []
    for i in range(0, 12, 4):
        p, mem = m.encode_raw(x[:, :, i:i + 4], mem)
        parts.append(p)
    assert torch.equal(torch.cat(parts, 2), whole)
    with pytest.raises(ValueError, match="encode"):
        m.encode_raw(x[:, :, :6])


@pytest.mark.parametrize("fmt", [".pth", ".safetensors"])
def test_load_round_trip(tmp_path, fmt):
    from safetensors.torch import save_file

    src = TAEHV(TINY).init_random_(7)
    sd = src.state_dict()
    path = tmp_path / f"w{fmt}"
    save_file(sd, str(path)) if fmt == ".safetensors" else torch.save(sd, path)
    got = load_taehv(path, TINY)
    assert not got.training and all(not p.requires_grad for p in got.parameters())
    assert all(torch.equal(got.state_dict()[k], v) for k, v in sd.items())
    z = torch.randn(16, 2, 4, 4)
    assert torch.equal(got.decode(z), src.eval().decode(z))


def test_load_errors_name_every_bad_key(tmp_path):
    sd = TAEHV(TINY).state_dict()
    del sd["decoder.9.conv.2.bias"]
    sd["decoder.99.weight"] = torch.zeros(1)
    sd["encoder.17.weight"] = torch.zeros(16, 8, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(VAECheckpointError) as e:
        load_taehv(path, TINY)
    msg = str(e.value)
    assert str(path) in msg and "missing keys (1): decoder.9.conv.2.bias" in msg
    assert "unexpected keys (1): decoder.99.weight" in msg
    assert "shape mismatch encoder.17.weight: checkpoint (16, 8, 1, 1) vs model (16, 8, 3, 3)" in msg
    with pytest.raises(FileNotFoundError):
        load_taehv(tmp_path / "absent.pth", TINY)
    with pytest.raises(VAECheckpointError, match="config"):  # a full-width file into the narrow model
        load_state_dict_checked(TAEHV(TINY), TAEHV(TAEW2_1, device="meta").state_dict())


def test_wider_tgrow_rows_keep_the_last_sub_frame():
    """A checkpoint whose first decoder TGrow was trained at time x 2 loads into the published
    (time x 1) stage with the rows of its last sub-frame, as madebyollin/taehv's loader does."""
    m = TAEHV(TINY)
    sd = m.state_dict()
    wide = torch.randn(2 * 16, 16, 1, 1)
    sd["decoder.7.conv.weight"] = wide
    load_state_dict_checked(m, sd)
    assert torch.equal(m.decoder[7].conv.weight, wide[16:])
