"""Layout parsing, packet packing and the session header: pure functions, no processes."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from liveavatar_rt.config import StreamConfig, from_name
from liveavatar_rt.parallel.comm import Packet
from liveavatar_rt.parallel.layout import Layout
from liveavatar_rt.parallel.protocol import REPORT, ERROR, SessionHeader, decode_report, encode_report


@pytest.mark.parametrize("spec,world,vae,steps", [
    ("4+1", 5, 4, [[0], [1], [2], [3], []]),
    ("2+1", 3, 2, [[0, 1], [2, 3], []]),
    ("1+1", 2, 1, [[0, 1, 2, 3], []]),
    ("2", 2, 1, [[0, 1], [2, 3]]),
    ("4", 4, 3, [[0], [1], [2], [3]]),
])
def test_layouts(spec, world, vae, steps):
    lay = Layout.parse(spec)
    assert (lay.world, lay.vae_rank, str(lay)) == (world, vae, spec)
    assert [lay.steps_of(r) for r in range(world)] == steps


@pytest.mark.parametrize("spec,match", [("3+1", "do not divide"), ("1", "single process"), ("4+2", "layout"),
                                         ("x", "layout"), ("0+1", "at least one")])
def test_bad_layouts(spec, match):
    with pytest.raises(ValueError, match=match):
        Layout.parse(spec)


def test_packet_views_round_trip():
    pk = Packet({"meta": ((2,), torch.int64), "x": ((1, 16, 3, 8, 8), torch.bfloat16),
                 "odd": ((3,), torch.bfloat16), "f": ((5,), torch.float32)})
    buf = pk.alloc()
    v = pk.views(buf)
    x = torch.randn(1, 16, 3, 8, 8).to(torch.bfloat16)
    v["x"].copy_(x)
    v["meta"].copy_(torch.tensor([7, 1]))
    v["f"].copy_(torch.arange(5.0))
    w = pk.views(buf.clone())
    assert torch.equal(w["x"], x) and w["meta"].tolist() == [7, 1] and w["f"].tolist() == [0, 1, 2, 3, 4]
    assert all(off % 8 == 0 for off, _ in pk.offsets.values())


def test_session_header_round_trip_and_packets():
    hdr = SessionHeader(session=3, seed=11, height=64, width=128, lat_h=8, lat_w=16, text_len=5, text_dim=4096,
                        dtype=torch.bfloat16, latent_dtype=torch.float32, motion_frames=19, decode_video=True,
                        sink_offset=None, position_mode="official", position_limit=45000, position_period=30000)
    assert SessionHeader.decode(hdr.encode()) == hdr
    cfg = from_name("tiny")
    data = hdr.data(StreamConfig(), cfg, "cpu", with_audio=True)
    assert data.fields["loc"][0] == (1, 3, cfg.num_audio_tokens + 1, cfg.dim)
    # latents travel in their own dtype (fp32 between steps with fp8 linears), audio tokens in the compute dtype
    assert data.fields["x"][1] == torch.float32 and data.fields["loc"][1] == torch.bfloat16
    assert hdr.sink("cpu").fields["x"][1] == torch.float32
    assert hdr.frames(StreamConfig(), "cpu").fields["video"][0] == (12, 64, 128, 3)
    latents_only = dataclasses.replace(hdr, decode_video=False, sink_offset=7)
    assert SessionHeader.decode(latents_only.encode()) == latents_only
    assert "video" not in latents_only.frames(StreamConfig(), "cpu").fields  # nothing decoded, nothing sent


def test_report_round_trip():
    v = REPORT.views(REPORT.alloc())
    encode_report(v, ERROR, 3, 7, "rank 3 failed: ünïcode " * 100)
    kind, rank, block, text = decode_report(v)
    assert (kind, rank, block) == (ERROR, 3, 7) and text.startswith("rank 3 failed") and len(text.encode()) <= 1024
