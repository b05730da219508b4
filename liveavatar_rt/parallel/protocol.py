"""What travels on the ring: tags, control messages, the session header and the packet layouts.

Channels (all point to point, fixed shapes for a session, no shape headers per block):
  control  rank 0 -> each worker, int64[16]: KEEPALIVE | START (+ session header) | SHUTDOWN
  abort    rank 0 -> each worker, int64[16], at most once: ABORT (a receive stays posted for the
           worker's lifetime, watched even while its main thread is busy)
  report   each worker -> rank 0, int64[4] + text: BYE (clean exit) or ERROR (with the reason)
  session  rank 0 -> each worker, once per session: text embeddings, reference and motion latents
           (computed once on rank 0 by the same code as Session and sent; no image on workers)
  data     DiT rank r -> r + 1: meta [block, flags] + block latent [1, 16, F, h, w] + the block's
           audio tokens (computed once on rank 0, the front, from its audio features);
           last DiT rank -> VAE rank: meta + latent
  frames   VAE rank -> rank 0: meta + clean latent (+ uint8 frames [4F, H, W, 3] if the session
           decodes)
  sink     VAE rank -> every other DiT rank: the clean first latent frame of a block flagged
           KEEP_SINK, sent right after that block is done, so it never stalls the pipeline
The flags of a block are the Session's decisions (engine/executor.py BlockJob), carried as data:
KEEP_SINK (keep this block's first clean latent frame as the sink) and RESINK (re-run the
conditioning prefill with the kept sink before this block's steps). No rank decides them.
End of stream and cancel travel in band: the sender puts the END flag on one message per
receive buffer (the receiver keeps 2 posted), so every posted receive is matched and a session
leaves no operation behind.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .comm import Packet

# tags (gloo p2p matches on (peer, tag)); per-session channels add 1000 * (session % 1000)
TAG_CONTROL, TAG_REPORT, TAG_ABORT = 1, 2, 3
TAG_SESSION, TAG_DATA, TAG_FRAMES, TAG_SINK = 10, 11, 12, 13

KEEPALIVE, START, SHUTDOWN, ABORT = 1, 2, 3, 4
BYE, ERROR = 1, 2
FLAG_END, FLAG_KEEP_SINK, FLAG_RESINK = 1, 2, 4
REPORT_TEXT = 1024

DTYPES = {1: torch.float32, 2: torch.bfloat16, 3: torch.float16}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}
POSITION_MODES = {0: "bounded", 1: "official"}


def job_flags(job) -> int:
    """The data-packet flags of a BlockJob."""
    return FLAG_KEEP_SINK * bool(job.keep_sink) | FLAG_RESINK * bool(job.resink)


def session_tag(base: int, session: int) -> int:
    return base + 1000 * (session % 1000)


CONTROL = Packet({"msg": ((16,), torch.int64)})
REPORT = Packet({"hdr": ((4,), torch.int64), "text": ((REPORT_TEXT,), torch.uint8)})


def encode_report(views: dict, kind: int, rank: int, block: int, text: str = "") -> None:
    raw = text.encode("utf-8", "replace")[:REPORT_TEXT]
    views["hdr"].copy_(torch.tensor([kind, rank, block, len(raw)]))
    views["text"].zero_()
    if raw:
        views["text"][:len(raw)].copy_(torch.frombuffer(bytearray(raw), dtype=torch.uint8))


def decode_report(views: dict) -> tuple[int, int, int, str]:
    kind, rank, block, n = (int(v) for v in views["hdr"].tolist())
    return kind, rank, block, bytes(views["text"][:n].tolist()).decode("utf-8", "replace")


@dataclass(frozen=True)
class SessionHeader:
    """Everything a worker needs to open its part of a session (sent in a START control)."""

    session: int
    seed: int
    height: int  # video H, W
    width: int
    lat_h: int  # latent h, w
    lat_w: int
    text_len: int  # rows of the prompt embeddings
    text_dim: int
    dtype: torch.dtype
    latent_dtype: torch.dtype  # block latents between steps (fp32 with fp8 linears: Pipeline.latent_dtype)
    motion_frames: int  # latent frames of the motion context
    decode_video: bool  # the VAE rank decodes (False: latents only)
    sink_offset: int | None
    position_mode: str  # engine.positions.PositionPolicy
    position_limit: int
    position_period: int

    def encode(self) -> torch.Tensor:
        mode = {v: k for k, v in POSITION_MODES.items()}[self.position_mode]
        # the message is int64[16], every slot taken: slot 9 packs both dtype codes (each < 16)
        vals = [START, self.session, self.seed, self.height, self.width, self.lat_h, self.lat_w, self.text_len,
                self.text_dim, DTYPE_CODES[self.dtype] + 16 * DTYPE_CODES[self.latent_dtype], self.motion_frames, int(self.decode_video),
                -1 if self.sink_offset is None else self.sink_offset, mode, self.position_limit,
                self.position_period]
        return torch.tensor(vals, dtype=torch.int64)

    @classmethod
    def decode(cls, msg: torch.Tensor) -> "SessionHeader":
        v = [int(x) for x in msg.tolist()]
        if v[0] != START:
            raise ValueError(f"not a START message: {v}")
        return cls(session=v[1], seed=v[2], height=v[3], width=v[4], lat_h=v[5], lat_w=v[6], text_len=v[7],
                   text_dim=v[8], dtype=DTYPES[v[9] % 16], latent_dtype=DTYPES[v[9] // 16], motion_frames=v[10], decode_video=bool(v[11]),
                   sink_offset=None if v[12] < 0 else v[12], position_mode=POSITION_MODES[v[13]],
                   position_limit=v[14], position_period=v[15])

    def spec(self, text: torch.Tensor, ref: torch.Tensor, motion: torch.Tensor):
        """The session as a worker sees it (engine.executor.SessionSpec; no image, no decoder cache)."""
        from ..engine.executor import SessionSpec
        from ..engine.positions import PositionPolicy

        return SessionSpec(seed=self.seed, height=self.height, width=self.width, text=text, ref_latent=ref,
                           motion=motion, positions=PositionPolicy(self.position_mode, self.position_limit,
                                                                   self.position_period),
                           sink_offset=self.sink_offset, decode=self.decode_video)

    # ---- packet layouts of this session -----------------------------------------------
    def payload(self, device) -> Packet:
        hw = (self.lat_h, self.lat_w)
        return Packet({"text": ((self.text_len, self.text_dim), self.dtype),
                       "ref": ((1, 16, 1, *hw), self.dtype),
                       "motion": ((1, 16, self.motion_frames, *hw), self.dtype)}, device)

    def data(self, stream, cfg, device, with_audio: bool) -> Packet:
        F = stream.frames_per_block
        fields = {"meta": ((2,), torch.int64), "x": ((1, 16, F, self.lat_h, self.lat_w), self.latent_dtype)}
        if with_audio:
            fields["loc"] = ((1, F, cfg.num_audio_tokens + 1, cfg.dim), self.dtype)
            fields["glob"] = ((1, F, 1, cfg.dim), self.dtype)
        return Packet(fields, device)

    def frames(self, stream, device) -> Packet:
        F = stream.frames_per_block
        fields = {"meta": ((2,), torch.int64), "x": ((1, 16, F, self.lat_h, self.lat_w), self.latent_dtype)}
        if self.decode_video:
            fields["video"] = ((4 * F, self.height, self.width, 3), torch.uint8)
        return Packet(fields, device)

    def sink(self, device) -> Packet:
        return Packet({"x": ((1, 16, 1, self.lat_h, self.lat_w), self.latent_dtype)}, device)
