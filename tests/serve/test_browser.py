"""End to end in headless Chromium (Debian's /usr/bin/chromium driven by Python Playwright;
no browser download): load the page, choose a portrait and an audio file, stream, and check
that video frames are painted (requestVideoFrameCallback) with a measured TTFF; then the same
with the microphone (Chromium's fake capture device).

Skipped when Chromium or Playwright is missing, unless LIVEAVATAR_RT_REQUIRE_BROWSER=1 (`make
test` sets it after installing Chromium, so there the test cannot silently vanish)."""
from __future__ import annotations

import os
import wave

import numpy as np
import pytest

from liveavatar_rt import envvars
from liveavatar_rt.system_deps import MissingTool, chromium_path, require

from .conftest import http_get, metric

CHROMIUM = chromium_path()
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--mute-audio",
         "--autoplay-policy=no-user-gesture-required",
         # the microphone case: Chromium's built-in fake capture device (a beeping tone), auto-allowed
         "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
AUDIO_S = 2.5


def _browser_or_skip():
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        missing, sync_playwright = f"playwright is not installed ({e})", None
    if missing is None:
        try:
            require("chromium")
        except MissingTool as e:
            missing = str(e)
    if missing:
        if envvars.require_browser():
            pytest.fail(f"browser test required but {missing}")
        pytest.skip(missing)
    return sync_playwright


def write_wav(path, pcm: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())


def test_page_streams_an_audio_file(server, portrait, speech, tmp_path):
    sync_playwright = _browser_or_skip()
    pcm, rate = speech
    wav, png = tmp_path / "speech.wav", tmp_path / "face.png"
    write_wav(wav, pcm[:int(AUDIO_S * rate)], rate)
    png.write_bytes(portrait)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS,
                                    env={**os.environ, "HOME": str(tmp_path)})
        try:
            page = browser.new_context().new_page()
            console = []
            page.on("console", lambda m: console.append(m.text))
            page.goto(server.url + "/", timeout=30000)
            page.set_input_files("#image", str(png))
            page.set_input_files("#audiofile", str(wav))
            page.click("#start")
            page.wait_for_function("() => window.liveavatar.framesShown >= 25 || window.liveavatar.state === 'error'",
                                   timeout=60000)
            stats = page.evaluate("() => window.liveavatar")
            assert stats["state"] != "error", (stats["errors"], console)
            page.wait_for_function("() => ['done', 'error'].includes(window.liveavatar.state)", timeout=60000)
            stats = page.evaluate("() => window.liveavatar")
            assert stats["state"] == "done", (stats["errors"], console)
            # the painted picture is the stream's: right size, not blank
            shown = page.evaluate("""() => {
                const v = document.getElementById('video'), c = document.createElement('canvas');
                c.width = v.videoWidth; c.height = v.videoHeight;
                const g = c.getContext('2d'); g.drawImage(v, 0, 0);
                const d = g.getImageData(0, 0, c.width, c.height).data;
                let s = 0, s2 = 0; for (let i = 0; i < d.length; i += 4) { s += d[i]; s2 += d[i] * d[i]; }
                const n = d.length / 4;
                return {w: v.videoWidth, h: v.videoHeight, std: Math.sqrt(s2 / n - (s / n) ** 2),
                        audioBytes: v.webkitAudioDecodedByteCount};
            }""")
            # the microphone: stream until a second of frames is shown, then Stop
            page.goto(server.url + "/", timeout=30000)
            page.set_input_files("#image", str(png))
            page.check("input[name=source][value=mic]")
            page.click("#start")
            page.wait_for_function("() => window.liveavatar.framesShown >= 25 || window.liveavatar.state === 'error'",
                                   timeout=60000)
            mic = page.evaluate("() => window.liveavatar")
            page.click("#stop")
        finally:
            browser.close()
    n16k = int(AUDIO_S * rate)
    blocks = -(-(-(-n16k // 640) + 3) // 12)  # + the 3 frames of lead-in silence
    assert stats["server"]["frames_sent"] == 12 * blocks - 3
    assert stats["segments"] >= blocks
    assert stats["framesShown"] >= 25
    assert stats["ttffMs"] is not None and stats["ttffMs"] > 0
    # the page reported what it showed; the server exposes it
    assert stats["server"]["shown_ttff_s"] == pytest.approx(stats["ttffMs"] / 1000, abs=1e-3)
    _, text = http_get(server.url + "/metrics")
    assert metric(text, "liveavatar_ttff_shown_seconds_mean") > 0
    assert (shown["w"], shown["h"]) == (64, 64) and shown["std"] > 1.0
    assert shown["audioBytes"] > 0  # Chromium decoded the AAC track too
    assert mic["state"] == "streaming" and not mic["errors"], (mic, console)
    assert mic["framesShown"] >= 25 and mic["ttffMs"] > 0 and mic["server"]["audio_s"] > 0.4
