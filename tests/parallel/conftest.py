import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from liveavatar_rt.config import DTYPES
from liveavatar_rt.engine import Pipeline
from tests.parallel.ring_run import SR, face, speech

REPO = Path(__file__).resolve().parents[2]
HARD_TIMEOUT = 100  # s: a ring run that takes longer is killed (process group) and fails the test


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def run_group(cmd: list[str], what: str, hard_timeout: float = HARD_TIMEOUT, env=None) -> str:
    """Run cmd in its own process group under a hard timeout -> its output text. Fails the test
    if it hangs, exits non-zero, or leaves any process of its group running."""
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        text, _ = proc.communicate(timeout=hard_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        pytest.fail(f"{what} hung (killed after {hard_timeout} s):\n{text[-4000:]}")
    deadline = time.monotonic() + 5
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = group_alive(proc.pid)
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
    assert not left, f"processes of {what} were left running:\n{text[-4000:]}"
    assert proc.returncode == 0, f"{what} exited with {proc.returncode}:\n{text[-4000:]}"
    return text


def run_ring(tmp_path, layout: str, *args: str, timeout: float = 20.0):
    """Run tests/parallel/ring_run.py in its own process group under a hard timeout.
    -> (info dict, arrays, output text, seconds); asserts no process of the group survives."""
    out = tmp_path / f"ring_{layout.replace('+', 'p')}.npz"
    cmd = [sys.executable, "-m", "tests.parallel.ring_run", "--layout", layout, "--out", str(out),
           "--timeout", str(timeout), *args]
    t0 = time.monotonic()
    text = run_group(cmd, f"ring run {layout}")
    seconds = time.monotonic() - t0
    info = json.loads(Path(str(out) + ".json").read_text())
    arrays = dict(np.load(out))
    return info, arrays, text, seconds


def reference_run(pipe, seed: int, seconds: float = 2.2):
    """Pipeline.generate frames + the block latents of the same single-process session."""
    video = pipe.generate(face(), speech(seconds), SR, seed=seed)
    sess = pipe.session(face(), seed=seed)
    sess.push_audio(speech(seconds), SR)
    sess.end_audio()
    blocks = list(sess.frames())
    sess.close()
    frames = np.concatenate([b.video for b in blocks])
    latents = [b.latent for b in blocks]
    assert np.array_equal(frames, video.frames)
    return video.frames, torch.cat(latents).float().numpy()


@pytest.fixture(scope="session")
def single_process():
    """References of the single-process engine, {(dtype, seed): (frames, latents)}, lazily;
    dtype "fp8" is bf16 with precision="fp8", "kvfp8" bf16 with kv_cache_dtype="fp8"."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # results are thread-count independent; 1 is fastest on 2 shared cores
    pipes, cache = {}, {}

    def get(dtype: str, seed: int):
        if (dtype, seed) not in cache:
            if dtype not in pipes:
                p = Pipeline.from_pretrained("tiny", seed=0, quiet=True,
                                             dtype=DTYPES["bf16" if dtype in ("fp8", "kvfp8") else dtype],
                                             max_area=64 * 64, precision="fp8" if dtype == "fp8" else "bf16",
                                             kv_cache_dtype="fp8" if dtype == "kvfp8" else None)
                pipes[dtype] = p
            cache[dtype, seed] = reference_run(pipes[dtype], seed)
        return cache[dtype, seed]

    yield get
    torch.set_num_threads(threads)
