"""Pipeline(decoder=<TAEHV-layout file>): a tiny streaming decoder of the VAE's latent space
(e.g. taew2_1 for the 14B) replaces the VAE's decoder; the VAE still encodes; on a ring layout
"R" the VAE-rank work moves to the last DiT rank with it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from liveavatar_rt.engine import Pipeline
from liveavatar_rt.engine.conditioning import WARM_LATENTS
from liveavatar_rt.engine.executor import to_uint8
from liveavatar_rt.model.taehv import TAEHV, TAEHVConfig, config_from_state_dict
from tests.parallel.conftest import reference_run, run_ring
from tests.parallel.ring_run import SR, face, speech

SMALL = TAEHVConfig(encoder_width=8, decoder_widths=(24, 16, 8, 8))  # the taew2_1 layout, narrow: fast on CPU


@pytest.fixture(scope="module")
def tae_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tae") / "taehv_small.safetensors"
    save_file({k: v.contiguous() for k, v in TAEHV(SMALL).init_random_(3).state_dict().items()}, str(path))
    return path


def _session(pipe, seed=3, seconds=2.2):
    sess = pipe.session(face(), seed=seed)
    sess.push_audio(speech(seconds), SR)
    sess.end_audio()
    blocks = list(sess.frames())
    sess.close()
    return blocks


def test_config_is_read_from_the_file_shapes(tae_file):
    from liveavatar_rt.io.vae_loading import read_vae_state_dict

    assert config_from_state_dict(read_vae_state_dict(tae_file)) == SMALL
    assert config_from_state_dict(TAEHV().state_dict()) == TAEHV().config  # taew2_1's own widths


def test_the_decoder_replaces_the_vae_decoder_only(tae_file):
    vae_pipe = Pipeline.from_pretrained("tiny", quiet=True, max_area=64 * 64)
    pipe = Pipeline.from_pretrained("tiny", quiet=True, max_area=64 * 64, decoder=tae_file)
    assert pipe.decoder is not pipe.vae and pipe.decoder.config == SMALL
    got, ref = _session(pipe), _session(vae_pipe)
    # the DiT's latents do not depend on the decoder; the frame count per block is the same rule
    assert all(torch.equal(a.latent, b.latent) for a, b in zip(got, ref))
    assert [len(b.video) for b in got] == [len(b.video) for b in ref]
    # the frames are the TAEHV stream decode, warmed on the motion latents as the VAE is
    with pipe.session(face(), seed=3) as sess:
        motion = sess.motion  # [1, 16, 19, h, w]
    dec = pipe.decoder.new_stream()
    dec.decode(motion[0, :, :WARM_LATENTS].float())
    frames = np.concatenate([to_uint8(dec.decode(b.latent[0].float())).numpy() for b in got])
    start = len(frames) - sum(len(b.video) for b in got)  # the stream-start frames the session drops
    assert np.array_equal(np.concatenate([b.video for b in got]), frames[start:])
    assert not np.array_equal(np.concatenate([b.video for b in got]), np.concatenate([b.video for b in ref]))


def test_a_decoder_of_another_latent_space_is_refused(tmp_path):
    path = tmp_path / "z4.safetensors"
    save_file({k: v.contiguous() for k, v in TAEHV(TAEHVConfig(latent_channels=4, encoder_width=8,
                                                               decoder_widths=(8, 8, 8, 8))).state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="4 latent channels"):
        Pipeline.from_pretrained("tiny", quiet=True, decoder=path)
    with pytest.raises(FileNotFoundError, match="taew2_1"):
        Pipeline.from_pretrained("tiny", quiet=True, decoder=tmp_path / "missing.pth")


def test_ring_with_the_decoder_on_the_last_dit_rank_equals_one_process(tmp_path, tae_file):
    """Layout "2": rank 1 runs steps 2, 3 and the TAEHV decode (no VAE rank), bit for bit."""
    info, arrays, _, _ = run_ring(tmp_path, "2", "--decoder", str(tae_file))
    assert info["error"] == "", info["error"]
    torch.set_num_threads(1)
    frames, latents = reference_run(Pipeline.from_pretrained("tiny", seed=0, quiet=True, max_area=64 * 64,
                                                             decoder=tae_file), 3)
    assert np.array_equal(arrays["latents_0"], latents)
    assert np.array_equal(arrays["frames_0"], frames)
