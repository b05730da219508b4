"""The pure rules behind the fault handling: who may connect (origin.py), log redaction
(logs.py), the throttle and the deadlines (limits.py). No sockets."""
from __future__ import annotations

import pytest

from liveavatar_rt.serve.config import ServeConfig
from liveavatar_rt.serve.limits import Phase, Throttle, expired
from liveavatar_rt.serve.logs import redact
from liveavatar_rt.serve.origin import AccessPolicy


@pytest.mark.parametrize("bind, host, ok", [
    ("127.0.0.1", "127.0.0.1:8000", True),
    ("127.0.0.1", "localhost:8000", True),
    ("127.0.0.1", "LOCALHOST.:8000", True),
    ("127.0.0.1", "[::1]:8000", True),
    ("127.0.0.1", "evil.example:8000", False),  # DNS rebinding: the page's own name
    ("127.0.0.1", "localhost.evil.example", False),
    ("127.0.0.1", "10.0.0.5:8000", False),  # not our bind address
    ("127.0.0.1", "", False),
    ("127.0.0.1", "a b", False),
    ("0.0.0.0", "10.0.0.5:8000", True),  # every interface: any of our addresses
    ("0.0.0.0", "evil.example", False),
    ("10.0.0.5", "10.0.0.5:8000", True),
])
def test_host_rule(bind, host, ok):
    assert (AccessPolicy(ServeConfig(host=bind)).host_problem(host) is None) == ok


def test_allowed_hosts():
    policy = AccessPolicy(ServeConfig(allowed_hosts=("Avatar.LAN",)))
    assert policy.host_problem("avatar.lan:443") is None
    assert policy.host_problem("other.lan") is not None
    assert AccessPolicy(ServeConfig(allowed_hosts=("*",))).host_problem("anything.example") is None


@pytest.mark.parametrize("origin, host, allowed, ok", [
    (None, "127.0.0.1:8000", (), True),  # not a browser
    ("http://127.0.0.1:8000", "127.0.0.1:8000", (), True),  # our own page
    ("http://localhost:8000", "localhost:8000", (), True),
    ("http://localhost:8000", "127.0.0.1:8000", (), False),  # another origin, even if it is us
    ("http://127.0.0.1:9000", "127.0.0.1:8000", (), False),  # another port is another origin
    ("http://evil.example", "127.0.0.1:8000", (), False),
    ("null", "127.0.0.1:8000", (), False),
    ("https://app.example", "127.0.0.1:8000", ("https://app.example:443/",), True),
    ("https://app.example:8443", "127.0.0.1:8000", ("https://app.example",), False),
    ("http://evil.example", "127.0.0.1:8000", ("*",), True),
])
def test_origin_rule(origin, host, allowed, ok):
    policy = AccessPolicy(ServeConfig(allowed_origins=allowed))
    assert (policy.origin_problem(origin, host) is None) == ok


def test_redaction():
    assert redact("/ws?token=abc") == "/ws?token=***"
    assert redact('GET /metrics?x=1&token=abc&y=2 HTTP/1.1') == "GET /metrics?x=1&token=***&y=2 HTTP/1.1"
    assert redact("/m?%74oken=abc") == "/m?%74oken=***"
    assert redact("/ws?tokens=1") == "/ws?tokens=1"
    assert redact("no query") == "no query"


def test_throttle():
    t = Throttle(10.0, now=0.0)
    assert [t.delay(0.0) for _ in range(10)] == [0.0] * 10  # a burst of `rate`
    assert t.delay(0.0) == pytest.approx(0.1)  # then one per 1/rate
    assert t.delay(1.0) == 0.0  # refilled


def test_deadlines():
    cfg = ServeConfig(start_timeout_s=10, audio_timeout_s=5, max_silence_s=30, ack_timeout_s=20)
    p = Phase(opened_at=0.0)
    assert expired(p, cfg, 9.0) is None and expired(p, cfg, 11.0).code == "start_timeout"
    p.started, p.ready_at = True, 12.0
    assert expired(p, cfg, 16.0) is None and expired(p, cfg, 18.0).code == "audio_timeout"
    p.first_audio_at = p.last_audio_at = 17.0
    assert expired(p, cfg, 1000.0) is None  # audio ahead, reading paused: no silence, no deadline
    p.silence_since = 100.0
    assert expired(p, cfg, 129.0) is None and expired(p, cfg, 131.0).code == "idle_timeout"
    p.ended, p.ack_wait_since = True, 200.0
    assert expired(p, cfg, 219.0) is None and expired(p, cfg, 221.0).code == "ack_timeout"


def test_malloc_trim_is_debounced(monkeypatch):
    from liveavatar_rt.serve import memory

    if memory._malloc_trim is None:
        pytest.skip("not glibc")
    monkeypatch.setattr(memory, "_last", 0.0)
    monkeypatch.setattr(memory, "_running", False)
    assert memory.trim_soon() is True
    assert memory.trim_soon() is False  # within MIN_INTERVAL_S (or still running)


def test_serve_cli_passes_the_load_options(monkeypatch):
    """`liveavatar-rt serve --schedule pipelined --kv-cache fp8 --compile` reach Engine.load."""
    from liveavatar_rt.cli import main
    from liveavatar_rt.serve import engine as engine_mod

    seen = {}

    def fake_load(model, **kw):
        seen.update(kw, model=model)
        raise SystemExit(7)

    monkeypatch.setattr(engine_mod.Engine, "load", classmethod(lambda cls, model, **kw: fake_load(model, **kw)))
    with pytest.raises(SystemExit):
        main(["serve", "--schedule", "pipelined", "--kv-cache", "fp8", "--compile"])
    assert seen["schedule"] == "pipelined" and seen["kv_cache_dtype"] == "fp8" and seen["compile"] is True
