"""TPP ring == single process, bit for bit; failures end every rank with a clear error.

Each ring runs in its own process group (tests/parallel/ring_run.py: that process is rank 0, its
children the other ranks, gloo on 127.0.0.1) under a hard timeout; after it, no process of the
group may be left. Audio of 2.2 s = 5 blocks: crosses the clip boundary, so the sink latent
travels from the VAE rank and every DiT rank re-runs the prefill before block 4.
"""
from __future__ import annotations

import numpy as np

from .conftest import run_ring


def assert_identical(info, arrays, single_process, dtype: str, seeds):
    assert info["error"] == "", info["error"]
    for i, seed in enumerate(seeds):
        frames, latents = single_process(dtype, seed)
        got_f, got_l = arrays[f"frames_{i}"], arrays[f"latents_{i}"]
        assert got_f.dtype == np.uint8 and got_f.shape == frames.shape == (57, 64, 64, 3)
        assert got_l.shape == latents.shape == (5, 16, 3, 8, 8)
        assert np.array_equal(got_l, latents), f"seed {seed}: block latents differ from the single process"
        assert np.array_equal(got_f, frames), f"seed {seed}: frames differ from Pipeline.generate"
    assert all(rep["ok"] and rep["exitcode"] == 0 for rep in info["reports"].values()), info["reports"]


def test_4_dit_ranks_plus_vae_rank_equal_single_process(tmp_path, single_process):
    info, arrays, _, seconds = run_ring(tmp_path, "4+1")
    assert len(info["reports"]) == 4
    assert_identical(info, arrays, single_process, "bf16", [3])
    print(f"4+1: ring up {info['ring_up_s']:.1f} s, run {seconds:.1f} s")


def test_2_dit_ranks_plus_vae_two_sessions_after_a_cancelled_one(tmp_path, single_process):
    """3 processes; a first session is cancelled after 2 blocks (every rank ends it cleanly),
    then two full sessions with other seeds run on the same ring."""
    info, arrays, _, _ = run_ring(tmp_path, "2+1", "--seeds", "3,4", "--cancel-first-after", "2")
    assert_identical(info, arrays, single_process, "bf16", [3, 4])


def test_vae_on_the_last_dit_rank(tmp_path, single_process):
    info, arrays, _, _ = run_ring(tmp_path, "2")  # rank 1 runs steps 2, 3 and the VAE
    assert len(info["reports"]) == 1
    assert_identical(info, arrays, single_process, "bf16", [3])


def test_fp32_one_dit_rank_plus_vae(tmp_path, single_process):
    info, arrays, _, _ = run_ring(tmp_path, "1+1", "--dtype", "fp32")
    assert_identical(info, arrays, single_process, "fp32", [3])


def test_fp8_linears_on_2_dit_ranks_plus_vae(tmp_path, single_process):
    """precision='fp8' (the published --fp8) on the ring == one process, and is not bf16."""
    info, arrays, _, _ = run_ring(tmp_path, "2+1", "--precision", "fp8")
    assert_identical(info, arrays, single_process, "fp8", [3])
    _, bf16_latents = single_process("bf16", 3)
    assert not np.array_equal(arrays["latents_0"], bf16_latents), "fp8 run equals bf16: fp8 was not applied"


def test_fp8_kv_cache_on_the_last_dit_rank(tmp_path, single_process):
    """kv_cache_dtype='fp8' reaches every rank: layout '2' (rank 1 runs steps 2, 3 and the VAE)
    == one process with the fp8 cache, which is not the bf16 cache's result."""
    info, arrays, _, _ = run_ring(tmp_path, "2", "--kv-cache", "fp8")
    assert_identical(info, arrays, single_process, "kvfp8", [3])
    _, bf16_latents = single_process("bf16", 3)
    assert not np.array_equal(arrays["latents_0"], bf16_latents), "fp8 cache equals bf16: it was not applied"


def test_a_dit_rank_that_dies_ends_every_rank_with_a_clear_error(tmp_path):
    """Rank 2 (step 2 of 4+1) exits after block 2: the front raises at once (its connection to
    rank 2 closes), aborts the others, and every process of the ring is gone."""
    timeout = 5.0
    info, _, text, _ = run_ring(tmp_path, "4+1", "--fault-rank", "2", "--fault-block", "2", "--timeout", str(timeout))
    assert "lost rank 2" in info["error"] and "exited or crashed" in info["error"], info["error"]
    assert info["failed_after_s"] < timeout + 5
    reps = info["reports"]
    assert reps["2"]["exitcode"] == 17  # the test fault
    for r in ("1", "3", "4"):
        assert reps[r]["exitcode"] == 1 and not reps[r]["ok"], reps
        assert reps[r]["error"].startswith(f"rank {r}"), reps[r]
        assert "aborted by rank 0 (rank 2 failed)" in reps[r]["error"] or "lost rank" in reps[r]["error"], reps[r]


def test_a_stalled_rank_times_out_and_every_rank_ends(tmp_path):
    """Rank 2 hangs (alive, never sends) after block 2: the front's watchdog times out, aborts
    every rank; the stalled one is ended by its abort watchdog thread."""
    timeout = 3.0
    info, _, _, _ = run_ring(tmp_path, "4+1", "--fault-rank", "2", "--fault-block", "2", "--fault-mode", "hang",
                             "--timeout", str(timeout))
    assert "no frames from rank 4 within 3 s" in info["error"] and "a rank stalled" in info["error"], info["error"]
    assert info["failed_after_s"] < 3 * timeout + 5
    reps = info["reports"]
    for r in ("1", "2", "3", "4"):
        assert reps[r]["exitcode"] == 1, reps
    # The abort reaches every rank, but a rank may first see a neighbour that already obeyed it
    # close its connection (a race of the two messages): either is a clear, bounded end.
    for r in ("1", "3", "4"):
        err = reps[r]["error"]
        assert "aborted by rank 0 (the pipeline stalled" in err or "exited or crashed" in err, reps
    assert "aborted by rank 0 (the pipeline stalled" in reps["2"]["error"], reps
    assert "while its main thread was busy" in reps["2"]["error"]


def _one_process(model, seed: int, **session_kw):
    """(frames, latents) of one single-process session of `model` with `session_kw`."""
    import torch

    from liveavatar_rt.engine import Pipeline

    from .ring_run import SR, face, speech

    pipe = Pipeline.from_pretrained(model, seed=0, quiet=True, max_area=64 * 64)
    with pipe.session(face(), seed=seed, **session_kw) as sess:
        sess.push_audio(speech(2.2), SR)
        sess.end_audio()
        blocks = list(sess.frames())
    return np.concatenate([b.video for b in blocks]), torch.cat([b.latent for b in blocks]).float().numpy()


def test_latents_only_session_on_the_ring(tmp_path):
    """decode=False on the ring (VAE on the last DiT rank): the same latents as one process,
    no frames decoded or sent, and the PCM still cut per block."""
    info, arrays, _, _ = run_ring(tmp_path, "2", "--no-decode")
    assert info["error"] == "", info["error"]
    frames, latents = _one_process("tiny", 3, decode=False)
    assert frames.shape == arrays["frames_0"].shape == (0, 64, 64, 3)
    assert np.array_equal(arrays["latents_0"], latents)
    assert all(rep["ok"] for rep in info["reports"].values()), info["reports"]
    vae_rank = info["reports"]["1"]["stats"][-1]
    assert vae_rank["decode_s"] == 0.0 and vae_rank["blocks"] == 5
    # only latents (+ meta, ENDs, the sink) left the VAE rank: all of it is less than the frames
    # of a single decoded block (12 x 64 x 64 x 3 bytes)
    assert vae_rank["bytes_sent"] < 12 * 64 * 64 * 3


def test_text_prompt_on_the_ring_equals_one_process(tmp_path):
    """A published-layout model (umT5 + wav2vec2) with a text prompt on 1+1: the prompt is
    encoded once on rank 0 and its embeddings reach every rank; same frames and latents."""
    from tests.published_layout import build

    model = build(tmp_path / "published")
    info, arrays, _, _ = run_ring(tmp_path, "1+1", "--model", str(model), "--prompt", "a person talking")
    assert info["error"] == "", info["error"]
    frames, latents = _one_process(model, 3, prompt="a person talking")
    assert np.array_equal(arrays["latents_0"], latents)
    assert np.array_equal(arrays["frames_0"], frames)
    other, _ = _one_process(model, 3, prompt="a cat singing")
    assert not np.array_equal(other, frames)  # the prompt matters, so the equality above says something


def test_published_model_streams_on_2_dit_ranks_plus_vae(tmp_path):
    """wav2vec2 features stream (windowed, audio/windowed.py): on a 2+1 ring the first block
    arrives while the audio is still being pushed, after about one block + lookahead of it, and
    the whole session equals one process."""
    from tests.published_layout import build

    model = build(tmp_path / "published")
    info, arrays, _, _ = run_ring(tmp_path, "2+1", "--model", str(model), "--early")
    assert info["error"] == "", info["error"]
    assert not info["early"]["ended"] and info["early"]["pushed_s"] <= 0.48 + 0.12 + 0.24 + 0.25
    frames, latents = _one_process(model, 3)
    assert np.array_equal(arrays["latents_0"], latents)
    assert np.array_equal(arrays["frames_0"], frames)
