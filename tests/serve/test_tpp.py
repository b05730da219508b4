"""`serve --tpp`: the same protocol on a pipeline-parallel ring (1+1 local gloo processes).
TPP is bit-identical to one process, so the streamed bytes equal the single-process server's;
the ring takes one session at a time (capacity 1), and back-to-back sessions work."""
from __future__ import annotations

import pytest

from liveavatar_rt.serve.client import ServerError, StreamClient

from .conftest import FULL_S, run_session, wait_idle


@pytest.fixture(scope="module")
def tpp_server(start_server):
    from liveavatar_rt.serve.app import create_app
    from liveavatar_rt.serve.config import ServeConfig
    from liveavatar_rt.serve.engine import Engine
    from liveavatar_rt.serve.server import BackgroundServer

    from .conftest import TEST_LIMITS

    engine = Engine.load("tiny", tpp="1+1")
    cfg = ServeConfig(**TEST_LIMITS)  # asks for 2 sessions; the ring caps it at 1
    srv = BackgroundServer(create_app(engine, cfg), cfg).start()
    yield srv
    srv.stop()
    engine.close()
    import torch.distributed as dist

    assert not dist.is_initialized(), "closing the ring must leave no process group behind"


def test_tpp_server_streams_the_single_process_bytes(tpp_server, solo, portrait, speech):
    pcm, rate = speech
    ring, ring_segments = run_session(tpp_server.ws_url, portrait, pcm[:int(FULL_S * rate)], rate, seed=0)
    local, local_segments = solo
    assert ring.init.data == local.init.data
    assert [s.data for s in ring_segments] == [s.data for s in local_segments]


def test_tpp_server_capacity_is_one(tpp_server, portrait, speech):
    """Also the ring's second session: it opens once the first has ended."""
    pcm, rate = speech
    wait_idle(tpp_server)
    with StreamClient(tpp_server.ws_url, timeout=60) as held:
        held.start(portrait, sample_rate=rate)
        held.send_audio(pcm[:int(0.5 * rate)])
        assert held.next_segment(timeout=60).meta["frames"] == 9
        with StreamClient(tpp_server.ws_url, timeout=10) as second:
            with pytest.raises(ServerError) as err:
                second.start(portrait, sample_rate=rate)
    assert err.value.code == "busy" and "(1 sessions)" in err.value.message
