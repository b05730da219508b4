"""One rank's part of one session: its denoising steps, and the VAE decode on the last stage.

A DiT rank owns a `BlockStepper` with only its own step caches and runs the conditioning
prefill itself (and again, with the sink latent, before block `blocks_per_clip`). The stage
that holds the VAE decodes every clean block with the streaming decoder (warmed on the
motion latents, as Session does), sends the frames and the latent to rank 0, and sends the
first latent frame of block 0 to every other DiT rank for the sink replacement.
"""
from __future__ import annotations

import time

import torch

from ..engine.conditioning import warmed_decoder
from ..engine.positions import PositionPolicy, SinkOffsets
from ..engine.session import to_uint8
from ..engine.stepper import BlockStepper
from .comm import RecvChannel, SendChannel
from .layout import Layout
from .protocol import FLAG_END, TAG_DATA, TAG_FRAMES, TAG_SINK, SessionHeader, session_tag

SLOTS = 2  # receive buffers per channel (double buffering); END is sent once per buffer


class Stage:
    def __init__(self, rank: int, layout: Layout, pipe, hdr: SessionHeader, text: torch.Tensor,
                 ref: torch.Tensor, motion: torch.Tensor, waiter):
        self.rank, self.layout, self.pipe, self.hdr, self.waiter = rank, layout, pipe, hdr, waiter
        self.stream, cfg, dev = pipe.stream, pipe.model.cfg, pipe.model.ops.device
        self.motion = motion
        self.steps = layout.steps_of(rank)
        self.is_vae = rank == layout.vae_rank
        self.stats = {"blocks": 0, "compute_s": 0.0, "prefill_s": 0.0, "decode_s": 0.0, "wait_in_s": 0.0}
        sid = hdr.session
        t0 = time.perf_counter()
        self.stepper = None
        if self.steps:
            stream = self.stream
            self.stepper = BlockStepper(
                pipe.model, stream, (hdr.lat_h, hdr.lat_w), steps=self.steps,
                positions=PositionPolicy(hdr.position_mode, hdr.position_limit, hdr.position_period),
                offsets=SinkOffsets(seed=hdr.seed, low=stream.sink_offset_range[0],
                                    high=stream.sink_offset_range[1], fixed=hdr.sink_offset))
            self.stepper.set_text(text)
            self.stepper.prefill(ref, motion)
        self.stats["prefill_s"] = time.perf_counter() - t0
        self.decoder = None
        if self.is_vae:
            self.decoder = warmed_decoder(pipe.vae, motion)  # Session's warm-up
        # channels
        self.out = None
        if self.is_vae:
            self.out = SendChannel(0, session_tag(TAG_FRAMES, sid), hdr.frames(self.stream, dev), "frames", SLOTS)
        else:
            nxt = rank + 1
            self.out = SendChannel(nxt, session_tag(TAG_DATA, sid),
                                   hdr.data(self.stream, cfg, dev, with_audio=layout.is_dit(nxt)), "block latent", SLOTS)
        self.sink_in = None
        self.sink_local: torch.Tensor | None = None
        self.sink_out: dict[int, SendChannel] = {}
        self.sink_sent = False
        if hdr.sink_replacement:
            if self.steps and not self.is_vae:
                self.sink_in = RecvChannel(layout.vae_rank, session_tag(TAG_SINK, sid), hdr.sink(dev), "sink latent", 1)
            if self.is_vae:
                self.sink_out = {d: SendChannel(d, session_tag(TAG_SINK, sid), hdr.sink(dev), "sink latent", 1)
                                 for d in range(layout.dit_ranks) if d != rank}

    def input_packet(self):
        """Layout of what this rank receives from rank - 1 (None on rank 0)."""
        if self.rank == 0:
            return None
        return self.hdr.data(self.stream, self.pipe.model.cfg, self.pipe.model.ops.device,
                             with_audio=self.layout.is_dit(self.rank))

    def _acquire(self, ch: SendChannel) -> dict[str, torch.Tensor]:
        """The next send buffer of `ch`, once its previous send completed."""
        t = time.perf_counter()
        self.waiter.wait(ch.free, f"rank {ch.dst} to take the {ch.what}", self._sends())
        self.stats["wait_out_s"] = self.stats.get("wait_out_s", 0.0) + time.perf_counter() - t
        return ch.acquire(self.waiter.deadline())

    def _sends(self):
        return [p for ch in (self.out, *self.sink_out.values()) for p in ch.pending if p is not None]

    # ---- one block ------------------------------------------------------------------------
    def handle(self, n: int, x: torch.Tensor, audio) -> None:
        """Run this rank's steps on block n's latent x [1, 16, F, h, w] (the audio tokens come
        from rank 0), then pass it on: to the next rank, or decode and send frames to rank 0."""
        t0 = time.perf_counter()
        if self.steps:
            if self.hdr.sink_replacement and n == self.stream.blocks_per_clip:
                self._sink_prefill()
            cond_states = torch.zeros_like(x)
            for i in self.steps:
                x = self.stepper.step(i, x, n, audio, cond_states)
        if self.is_vae:
            self._decode_and_send(n, x)
        else:
            t = time.perf_counter()
            v = self._acquire(self.out)
            t0 += time.perf_counter() - t  # send-buffer waits are not compute
            v["meta"].copy_(torch.tensor([n, 0]))
            v["x"].copy_(x)
            if "loc" in v:
                v["loc"].copy_(audio[0])
                v["glob"].copy_(audio[1])
            self.out.send()
        self.stats["blocks"] += 1
        self.stats["compute_s"] += time.perf_counter() - t0

    def _sink_prefill(self) -> None:
        t = time.perf_counter()
        if self.sink_local is not None:
            sink = self.sink_local
        else:
            ch = self.sink_in
            self.waiter.wait(ch.ready, f"the sink latent from rank {ch.src}", [ch.head])
            slot, v = ch.take()
            if int(v["meta"][1]) != 1:
                raise RuntimeError("the VAE rank sent no sink latent (block 0 was never decoded)")
            sink = v["x"].clone()
            ch.release(slot, repost=False)
            self.sink_in = None
        self.stepper.prefill(sink, self.motion)
        self.stats["prefill_s"] += time.perf_counter() - t

    def _decode_and_send(self, n: int, x: torch.Tensor) -> None:
        if n == 0 and self.hdr.sink_replacement:
            first = x[:, :, :1]
            if self.steps:
                self.sink_local = first.clone()
            self._send_sinks(first, valid=True)
        t = time.perf_counter()
        video = self.decoder.decode(x[0].float())
        frames = to_uint8(video)
        self.stats["decode_s"] += time.perf_counter() - t
        v = self._acquire(self.out)
        if frames.shape != v["video"].shape:
            raise RuntimeError(f"decoded block {n} has shape {tuple(frames.shape)}, expected {tuple(v['video'].shape)}")
        v["meta"].copy_(torch.tensor([n, 0]))
        v["x"].copy_(x)
        v["video"].copy_(frames)
        self.out.send()

    def _send_sinks(self, first: torch.Tensor | None, valid: bool) -> None:
        for ch in self.sink_out.values():
            v = self._acquire(ch)
            v["meta"].copy_(torch.tensor([0, int(valid)]))
            if first is not None:
                v["x"].copy_(first)
            ch.send()
        self.sink_sent = True

    # ---- end of the session ---------------------------------------------------------------
    def finish(self) -> None:
        """END downstream (once per receive buffer), the sink if block 0 never came, drain the
        sink receive, and wait until every send went out."""
        for _ in range(SLOTS):
            v = self._acquire(self.out)
            v["meta"].copy_(torch.tensor([-1, FLAG_END]))
            self.out.send()
        if self.sink_out and not self.sink_sent:
            self._send_sinks(None, valid=False)
        if self.sink_in is not None:
            ch = self.sink_in
            self.waiter.wait(ch.ready, f"the sink latent from rank {ch.src} (end of session)", [ch.head])
            slot, _ = ch.take()
            ch.release(slot, repost=False)
            self.sink_in = None
        sends = self._sends()
        self.waiter.wait(lambda: all(p.done for p in sends), "the last sends to complete", sends)
        self.stats["bytes_sent"] = sum(ch.bytes_sent for ch in (self.out, *self.sink_out.values()))
        self.stepper = None  # drop the caches now
