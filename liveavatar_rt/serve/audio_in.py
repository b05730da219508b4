"""Audio into one session, off the event loop, in order.

Why: pushing audio is not free (PCM decode, resampling, the streaming log-mel features, all
under the session's lock). On the event loop, one client pushing 96 kHz stereo f32 as fast as
it could raised every other request's latency to ~0.5 s (issue 15). Here each session has one
thread of its own: its decodes and pushes run there in arrival order (client audio, silence,
end), one second of audio at a time, while the loop serves everyone else; the receive loop
awaits each message's push, so a client cannot queue work faster than it is done.

    feeder = AudioFeeder(session, fmt, "s3")
    seconds = await feeder.audio(data)     # ProtocolError (bad_audio) on bad PCM
    await feeder.silence(n_samples)
    await feeder.end()
    feeder.close()                         # at teardown; a push in progress finishes first
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .protocol import AudioFormat, check_whole_frames, decode_pcm

CHUNK_S = 1.0  # audio decoded and pushed per step (bounds the session lock's hold time and memory)


def _guarded(fn, *args) -> None:
    """Push/end on a session that already failed or closed: the worker reports that itself."""
    try:
        fn(*args)
    except RuntimeError:  # SessionClosed, a ring that stopped, a push after end
        pass


class AudioFeeder:
    def __init__(self, session, fmt: AudioFormat, name: str):
        self.sess, self.fmt = session, fmt
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"liveavatar-audio-{name}")
        self._closed = False

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def audio(self, data: bytes) -> float:
        """Decode and push one binary message; returns the seconds of audio it held."""
        check_whole_frames(len(data), self.fmt)  # before any of it is pushed
        return await self._run(self._push_pcm, data)

    def _push_pcm(self, data: bytes) -> float:
        fmt, view = self.fmt, memoryview(data)
        step = fmt.frame_bytes * max(1, int(CHUNK_S * fmt.sample_rate))
        frames = 0
        for i in range(0, len(view), step):
            if self._closed:
                break
            pcm = decode_pcm(view[i:i + step], fmt)
            if pcm.size:
                _guarded(self.sess.push_audio, pcm, fmt.sample_rate)
                frames += pcm.size
        return frames / fmt.sample_rate

    async def silence(self, samples: int) -> None:
        await self._run(_guarded, self.sess.push_audio, np.zeros(samples, np.float32), self.fmt.sample_rate)

    async def end(self) -> None:
        await self._run(_guarded, self.sess.end_audio)

    def close(self) -> None:
        """Stop taking work; the thread ends after the step in progress (never waited for)."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
