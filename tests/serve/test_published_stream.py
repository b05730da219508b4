"""`liveavatar-rt serve` on a published-layout model (wav2vec2 audio): the first segment comes
while the client is still sending audio (windowed wav2vec2, audio/windowed.py), not after
the end of the speech as with the published offline features."""
from __future__ import annotations

import pytest

from .conftest import TEST_LIMITS


def test_published_model_streams_before_the_client_ends(tmp_path, portrait, speech):
    pytest.importorskip("transformers")
    from liveavatar_rt.serve.app import create_app
    from liveavatar_rt.serve.client import StreamClient
    from liveavatar_rt.serve.config import ServeConfig
    from liveavatar_rt.serve.engine import Engine
    from liveavatar_rt.serve.server import BackgroundServer
    from tests.published_layout import build

    engine = Engine.load(str(build(tmp_path / "published")))
    cfg = ServeConfig(**TEST_LIMITS)
    pcm, rate = speech
    try:
        with BackgroundServer(create_app(engine, cfg), cfg) as srv, StreamClient(srv.ws_url, timeout=60) as c:
            c.start(portrait, sample_rate=rate)
            c.send_audio(pcm[:int(1.0 * rate)])  # block 0 needs 0.36 s (after the lead-in) + 0.16 s lookahead
            first = c.next_segment(timeout=60)
            assert first is not None and c.done is None  # a segment, and the session is still open
            c.end()
            list(c.segments(timeout=60, limit=100))
        assert c.done is not None
    finally:
        engine.close()
