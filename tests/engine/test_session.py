"""Session / Pipeline: streaming equals offline, errors are clear and lose nothing."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from liveavatar_rt.engine import Pipeline, SessionClosed
from liveavatar_rt.io.image import ImageError

SR = 16000


@pytest.fixture(scope="module")
def pipe():
    p = Pipeline.from_pretrained("tiny", quiet=True, max_area=64 * 64)  # 64x64 video, 8x8 latent: small and fast
    return p


@pytest.fixture(scope="module")
def face():
    y, x = np.mgrid[0:96, 0:80]
    img = np.stack([(x * 3) % 256, (y * 2) % 256, ((x + y) * 5) % 256], -1).astype(np.uint8)
    return img


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * g.standard_normal(t.size)).astype(np.float32)


def test_streaming_random_chunks_equals_offline(pipe, face):
    """5 blocks (crosses the clip boundary, so the sink replacement runs), audio pushed from a
    producer thread in random chunk sizes at 44.1 kHz int16 stereo vs all at once."""
    pcm = speech(2.2)
    stereo = (np.stack([pcm, pcm], 1) * 32767).astype(np.int16)
    offline = pipe.generate(face, stereo, SR, seed=3)
    assert offline.frames.dtype == np.uint8 and offline.frames.shape[1:] == (64, 64, 3)
    sess = pipe.session(face, seed=3)
    rng = np.random.default_rng(0)

    def produce():
        i = 0
        while i < len(stereo):
            n = int(rng.integers(1, 3000))
            sess.push_audio(stereo[i:i + n], SR)
            i += n
        sess.end_audio()

    th = threading.Thread(target=produce)
    th.start()
    blocks = list(sess.frames(timeout=60))
    th.join()
    sess.close()
    assert [b.index for b in blocks] == list(range(len(blocks)))
    assert len(blocks[0].video) == 9 and all(len(b.video) == 12 for b in blocks[1:])
    assert len(blocks) >= 5
    streamed = np.concatenate([b.video for b in blocks])
    assert np.array_equal(streamed, offline.frames)
    audio = np.concatenate([b.audio for b in blocks])
    assert np.array_equal(audio, offline.audio)
    assert len(audio) == len(streamed) * SR // 25  # audio spans exactly the video


def test_sink_replacement_changes_later_blocks_only(pipe, face):
    pcm = speech(2.2, seed=1)
    a = pipe.generate(face, pcm, SR, seed=0, sink_replacement=True)
    b = pipe.generate(face, pcm, SR, seed=0, sink_replacement=False)
    first_clip = 9 + 3 * 12
    assert np.array_equal(a.frames[:first_clip], b.frames[:first_clip])
    assert not np.array_equal(a.frames[first_clip:], b.frames[first_clip:])


def test_decode_false_gives_the_same_latents_and_audio_without_frames(pipe, face):
    """5 blocks (across the sink replacement): decode=False skips only the VAE decode."""
    pcm = speech(2.2, seed=2)

    def run(decode):
        with pipe.session(face, seed=1, decode=decode) as sess:
            sess.push_audio(pcm, SR)
            sess.end_audio()
            return list(sess.frames())

    full, lat = run(True), run(False)
    assert len(full) == len(lat) >= 5
    for a, b in zip(full, lat):
        assert b.video.shape == (0, 64, 64, 3) and b.video.dtype == np.uint8
        assert np.array_equal(a.latent.float().numpy(), b.latent.float().numpy())
        assert np.array_equal(a.audio, b.audio)  # the same span, first block's dropped frames included
        assert "vae_decode" not in b.timings


def test_seed_changes_output(pipe, face):
    pcm = speech(0.5)
    assert not np.array_equal(pipe.generate(face, pcm, SR, seed=0).frames, pipe.generate(face, pcm, SR, seed=1).frames)


@pytest.mark.parametrize("bad,match", [
    (np.zeros(0, np.float32), "zero-length|empty|no samples"),
    (np.array([0.1, np.nan, 0.2] * 100, np.float32), "NaN|nan|non-finite"),
    (np.array([0.1, np.inf] * 100, np.float32), "inf|non-finite"),
])
def test_bad_audio_is_refused_and_session_survives(pipe, face, bad, match):
    with pipe.session(face) as sess:
        with pytest.raises(ValueError, match=match):
            sess.push_audio(bad, SR)
        sess.push_audio(speech(0.5), SR)  # the session is still usable
        sess.end_audio()
        assert len(list(sess.frames())) >= 1


@pytest.mark.parametrize("image,match", [
    ("/nonexistent/face.png", "does not exist|not found|missing"),
    (np.zeros((20, 20, 3), np.uint8), "too small"),
    (np.zeros((100, 100), np.float64), "dtype|uint8"),
])
def test_bad_images_are_refused(pipe, image, match):
    with pytest.raises(ImageError, match=match):
        pipe.session(image)


def test_unsupported_and_corrupt_image_files(pipe, tmp_path):
    (tmp_path / "a.gif").write_bytes(b"GIF89a")
    with pytest.raises(ImageError, match="gif"):
        pipe.session(tmp_path / "a.gif")
    (tmp_path / "b.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageError):
        pipe.session(tmp_path / "b.png")
    (tmp_path / "c.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        pipe.session(tmp_path / "c.png")


def test_failed_session_does_not_poison_others(pipe, face, monkeypatch):
    sess = pipe.session(face)
    sess.push_audio(speech(0.6), SR)
    sess.end_audio()
    boom = RuntimeError("decoder exploded")
    monkeypatch.setattr(sess.executor.decoder, "decode", lambda *a: (_ for _ in ()).throw(boom))
    with pytest.raises(RuntimeError, match="exploded"):
        list(sess.frames())
    with pytest.raises(SessionClosed, match="exploded"):
        sess.push_audio(speech(0.1), SR)
    # a new session on the same pipeline works and matches a never-failed run
    pcm = speech(0.6)
    assert np.array_equal(pipe.generate(face, pcm, SR).frames, pipe.generate(face, pcm, SR).frames)


def test_frames_times_out_without_audio(pipe, face):
    with pipe.session(face) as sess:
        with pytest.raises(TimeoutError, match="block 0"):
            next(sess.frames(timeout=0.05))


def test_model_directory_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Pipeline.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        Pipeline.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"dim": 128, "num_heads": 2, "num_layers": 1, "ffn_dim": 256, "audio_inject_layers": [0]}')
    with pytest.raises(FileNotFoundError, match="liveavatar.safetensors.*Wan2.1_VAE.pth|Wan2.1_VAE.pth"):
        Pipeline.from_pretrained(tmp_path)


def test_pipeline_is_fixed_after_loading(pipe):
    """Area, stream config and layout are chosen in from_pretrained; nothing changes them later."""
    import dataclasses

    for name, value in [("max_area", 32 * 32), ("stream", dataclasses.replace(pipe.stream, cuda_graphs=False)),
                        ("layout", "2+1")]:
        with pytest.raises(AttributeError):
            setattr(pipe, name, value)
    assert pipe.layout == "1" and pipe.max_sessions is None and pipe.ring is None
    with pytest.raises(ValueError, match="ring options need a TPP layout"):
        from liveavatar_rt.parallel import RingOptions

        Pipeline.from_pretrained("tiny", quiet=True, ring=RingOptions())


def test_local_executor_refuses_a_sink_replacement_without_a_kept_sink(pipe, face):
    from liveavatar_rt.engine.executor import BlockJob

    with pipe.session(face) as sess:
        h, w = sess.ref_latent.shape[-2:]
        cfg = pipe.model.cfg
        job = BlockJob(0, torch.zeros(1, 16, 3, h, w, dtype=pipe.dtype),
                       torch.zeros(1, cfg.audio_layers, cfg.audio_dim, 12), resink=True)
        with pytest.raises(RuntimeError, match="no block kept a sink"):
            sess.executor.submit(job)
