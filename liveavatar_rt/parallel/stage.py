"""One rank's part of one session: its denoising steps, and the VAE decode on the last stage.

A DiT rank owns a `BlockStepper` with only its own step caches and runs the conditioning
prefill itself. Per block it follows the block's flags (set by the Session, see protocol.py):
RESINK re-runs the prefill with the sink latent first; KEEP_SINK makes the VAE rank keep the
block's first clean latent frame and send it to every other DiT rank. The stage that holds the
VAE decodes every clean block with the streaming decoder (warmed on the motion latents, as in
one process) unless the session does not decode, and sends the latent (and frames) to rank 0.
"""
from __future__ import annotations

import time

import torch

from ..engine.conditioning import warmed_decoder
from ..engine.executor import open_stepper, to_uint8
from .comm import RecvChannel, SendChannel
from .layout import Layout
from .protocol import FLAG_END, FLAG_KEEP_SINK, FLAG_RESINK, TAG_DATA, TAG_FRAMES, TAG_SINK, SessionHeader, session_tag

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
        self.stepper = open_stepper(pipe, hdr.spec(text, ref, motion), self.steps) if self.steps else None
        self.stats["prefill_s"] = time.perf_counter() - t0
        self.decoder = warmed_decoder(pipe.decoder, motion) if self.is_vae and hdr.decode_video else None
        if self.is_vae:
            self.out = SendChannel(0, session_tag(TAG_FRAMES, sid), hdr.frames(self.stream, dev), "frames", SLOTS)
        else:
            nxt = rank + 1
            self.out = SendChannel(nxt, session_tag(TAG_DATA, sid),
                                   hdr.data(self.stream, cfg, dev, with_audio=layout.is_dit(nxt)), "block latent", SLOTS)
        self.sink_in: RecvChannel | None = None  # posted when a KEEP_SINK block passes a DiT rank
        self.sink_local: torch.Tensor | None = None  # the sink, where this rank is the VAE rank
        self.sink_out: dict[int, SendChannel] = {}

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
    def handle(self, n: int, x: torch.Tensor, audio, flags: int) -> None:
        """Run this rank's steps on block n's latent x [1, 16, F, h, w] (the audio tokens come
        from rank 0), then pass it on: to the next rank, or decode and send frames to rank 0."""
        t0 = time.perf_counter()
        if self.steps:
            if flags & FLAG_KEEP_SINK and not self.is_vae and self.sink_in is None:
                dev = self.pipe.model.ops.device
                self.sink_in = RecvChannel(self.layout.vae_rank, session_tag(TAG_SINK, self.hdr.session),
                                           self.hdr.sink(dev), "sink latent", 1)
            if flags & FLAG_RESINK:
                self._sink_prefill()
            cond_states = torch.zeros_like(x)
            for i in self.steps:
                x = self.stepper.step(i, x, n, audio, cond_states)
        if self.is_vae:
            if flags & FLAG_KEEP_SINK:
                self._keep_sink(x[:, :, :1])
            self._decode_and_send(n, x)
        else:
            t = time.perf_counter()
            v = self._acquire(self.out)
            t0 += time.perf_counter() - t  # send-buffer waits are not compute
            v["meta"].copy_(torch.tensor([n, flags]))
            _put(v["x"], x, "block latent")
            if "loc" in v:
                v["loc"].copy_(audio[0])
                v["glob"].copy_(audio[1])
            self.out.send()
        self.stats["blocks"] += 1
        self.stats["compute_s"] += time.perf_counter() - t0

    def _keep_sink(self, first: torch.Tensor) -> None:
        """The VAE rank: keep the sink (if it runs steps too) and send it to every other DiT rank."""
        if self.steps:
            self.sink_local = first.clone()
        for d in range(self.layout.dit_ranks):
            if d != self.rank:
                ch = self.sink_out.get(d) or SendChannel(d, session_tag(TAG_SINK, self.hdr.session),
                                                         self.hdr.sink(first.device), "sink latent", 1)
                self.sink_out[d] = ch
                v = self._acquire(ch)
                _put(v["x"], first, "sink latent")
                ch.send()

    def _sink_prefill(self) -> None:
        t = time.perf_counter()
        if self.is_vae:
            sink = self.sink_local
        else:
            if self.sink_in is None:
                raise RuntimeError("a RESINK block came before any KEEP_SINK block")
            sink = self._take_sink()
        if sink is None:
            raise RuntimeError("a RESINK block came before any KEEP_SINK block")
        self.stepper.prefill(sink, self.motion)
        self.stats["prefill_s"] += time.perf_counter() - t

    def _take_sink(self) -> torch.Tensor:
        ch = self.sink_in
        self.waiter.wait(ch.ready, f"the sink latent from rank {ch.src}", [ch.head])
        slot, v = ch.take()
        sink = v["x"].clone()
        ch.release(slot, repost=False)
        self.sink_in = None
        return sink

    def _decode_and_send(self, n: int, x: torch.Tensor) -> None:
        frames = None
        if self.decoder is not None:
            t = time.perf_counter()
            frames = to_uint8(self.decoder.decode(x[0].float()))
            self.stats["decode_s"] += time.perf_counter() - t
        v = self._acquire(self.out)
        v["meta"].copy_(torch.tensor([n, 0]))
        _put(v["x"], x, "clean latent")
        if frames is not None:
            if frames.shape != v["video"].shape:
                raise RuntimeError(f"decoded block {n} has shape {tuple(frames.shape)}, expected {tuple(v['video'].shape)}")
            v["video"].copy_(frames)
        self.out.send()

    # ---- end of the session ---------------------------------------------------------------
    def finish(self) -> None:
        """END downstream (once per receive buffer), drain a sink receive that no RESINK block
        used (the VAE rank sends one for every KEEP_SINK block it saw, and every block reaches
        it), and wait until every send went out."""
        for _ in range(SLOTS):
            v = self._acquire(self.out)
            v["meta"].copy_(torch.tensor([-1, FLAG_END]))
            self.out.send()
        if self.sink_in is not None:
            self._take_sink()
        sends = self._sends()
        self.waiter.wait(lambda: all(p.done for p in sends), "the last sends to complete", sends)
        self.stats["bytes_sent"] = sum(ch.bytes_sent for ch in (self.out, *self.sink_out.values()))
        self.stepper = None  # drop the caches now


def _put(buf: torch.Tensor, t: torch.Tensor, what: str) -> None:
    """Copy into a send buffer; a dtype change would round silently and break ring == one process."""
    if t.dtype != buf.dtype:
        raise RuntimeError(f"{what} is {t.dtype} but the session header says {buf.dtype} (Pipeline.latent_dtype)")
    buf.copy_(t)
