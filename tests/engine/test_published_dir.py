"""The 14B code path end to end on a tiny directory in the published layout: sharded DiT +
LoRA, Wan2.1 VAE .pth, umT5 .pth + tokenizer, wav2vec2 folder (all random weights)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="the 14B front ends (umT5 tokenizer, wav2vec2) use transformers")
pytest.importorskip("sentencepiece", reason="the test tokenizer is trained with sentencepiece")

from liveavatar_rt.engine import Pipeline  # noqa: E402
from tests.published_layout import build  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build(tmp_path_factory.mktemp("published"))


def test_generate_from_published_layout(model_dir):
    pipe = Pipeline.from_pretrained(model_dir, dtype=torch.bfloat16, quiet=True, max_area=64 * 64)
    assert pipe.vae.config.dim == 8 and pipe.model.cfg.text_len == 16
    face = (np.random.default_rng(0).random((80, 64, 3)) * 255).astype(np.uint8)
    t = np.arange(16000) / 16000
    pcm = (0.2 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    with pipe.session(face, prompt="a person talking", seed=0, audio_window="offline") as sess:
        sess.push_audio(pcm, 16000)
        assert sess.audio.blocks_ready() == 0  # the published path needs the whole utterance
        sess.end_audio()
        blocks = list(sess.frames())
    # published length: 1 s of audio -> rounded up to one whole clip of 48 frames = 4 blocks
    assert len(blocks) == 4 and sum(len(b.video) for b in blocks) == 48 - 3
    video = np.concatenate([b.video for b in blocks])
    assert video.shape[1:] == (64, 64, 3) and video.std() > 0
    # the prompt reaches the DiT: another prompt gives other frames
    other = pipe.generate(face, pcm, 16000, seed=0, prompt="something else entirely", audio_window="offline")
    assert not np.array_equal(other.frames, video)


def test_published_layout_names_missing_files(model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "Wan2.1_VAE.pth").unlink()
    shutil.rmtree(broken / "wav2vec2-large-xlsr-53-english")
    with pytest.raises(FileNotFoundError) as err:
        Pipeline.from_pretrained(broken)
    assert "Wan2.1_VAE.pth" in str(err.value) and "wav2vec2-large-xlsr-53-english" in str(err.value)


def test_prompt_needs_a_text_encoder():
    pipe = Pipeline.from_pretrained("tiny", quiet=True)
    with pytest.raises(ValueError, match="no text encoder"):
        pipe.session(np.zeros((64, 64, 3), np.uint8), prompt="hello")


def test_published_model_streams_before_the_audio_ends(model_dir):
    """The wav2vec2 path yields block 0 once its audio + lookahead is there, before end_audio();
    audio_window="offline" (the published whole-utterance path) waits for the end."""
    from liveavatar_rt.audio import AudioWindow

    pipe = Pipeline.from_pretrained(model_dir, dtype=torch.bfloat16, quiet=True, max_area=64 * 64)
    face = (np.random.default_rng(0).random((80, 64, 3)) * 255).astype(np.uint8)
    pcm = (0.2 * np.sin(2 * np.pi * 200 * np.arange(40000) / 16000)).astype(np.float32)
    win = AudioWindow(window_s=2.0, lookahead_s=0.08)
    with pipe.session(face, seed=0, audio_window=win) as sess:
        need = 12 * 640 - 3 * 640 + 1280  # block 0's own audio (after the 3-frame lead-in) + lookahead
        sess.push_audio(pcm[:need - 1], 16000)
        with pytest.raises(TimeoutError):
            next(sess.frames(timeout=0.2))
        sess.push_audio(pcm[need - 1:need], 16000)
        block = next(sess.frames(timeout=60))
        assert block.index == 0 and len(block.video) == 9 and not sess.audio.ended
    with pipe.session(face, seed=0, audio_window="offline") as sess:
        sess.push_audio(pcm, 16000)
        with pytest.raises(TimeoutError):
            next(sess.frames(timeout=0.2))
        sess.end_audio()
        assert next(sess.frames(timeout=60)).index == 0
    with pytest.raises(ValueError, match="log-mel"):  # the tiny preset has no wav2vec2
        Pipeline.from_pretrained("tiny", quiet=True).session(face, audio_window="offline")


def test_fp8_precision_and_the_quantized_file(model_dir, tmp_path):
    """precision='fp8' from the bf16 shards + LoRA equals loading the file `liveavatar-rt quantize`
    writes, and both stream the same latents (other than bf16's)."""
    import shutil

    from liveavatar_rt.cli import main

    face = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    pcm = (0.2 * np.sin(2 * np.pi * 180 * np.arange(8000) / 16000)).astype(np.float32)

    def latents(root, precision):
        pipe = Pipeline.from_pretrained(root, quiet=True, max_area=64 * 64, precision=precision)
        assert pipe.precision == precision
        with pipe.session(face, seed=0, audio_window="offline") as sess:
            sess.push_audio(pcm, 16000)
            sess.end_audio()
            return torch.cat([b.latent.float() for b in sess.frames()])

    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    from_shards = latents(copy, "fp8")
    assert main(["quantize", "--model", str(copy)]) == 0
    assert (copy / "liveavatar_rt_fp8.safetensors").is_file()
    assert not torch.equal(latents(copy, "bf16"), from_shards)  # bf16 ignores the fp8 file
    for f in [copy / "liveavatar.safetensors", *copy.glob("diffusion_pytorch_model*")]:
        f.unlink()  # the fp8 file alone carries the DiT and its merged LoRA
    assert torch.equal(latents(copy, "fp8"), from_shards)
    # a file at that place without the quantize metadata (another tool's, an old format) is refused
    from safetensors.torch import load_file, save_file

    fp8_file = copy / "liveavatar_rt_fp8.safetensors"
    save_file(load_file(str(fp8_file)), str(fp8_file), metadata={"format": "something-else"})
    with pytest.raises(ValueError, match="liveavatar-rt quantize"):
        Pipeline.from_pretrained(copy, quiet=True, max_area=64 * 64, precision="fp8")
