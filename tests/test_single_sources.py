"""Values with one source of truth: config.DTYPES, config.AUDIO_RATE, ModelConfig.rope_table_len."""
from __future__ import annotations

import inspect

import torch

from liveavatar_rt.audio import LogMelFeatures, resample
from liveavatar_rt.audio.resample import StreamingResampler
from liveavatar_rt.audio.wav2vec import Wav2VecFeatures
from liveavatar_rt.config import AUDIO_RATE, DTYPES, ModelConfig
from liveavatar_rt.engine.positions import PositionPolicy


def test_dtypes():
    assert DTYPES == {"bf16": torch.bfloat16, "fp32": torch.float32}


def test_audio_rate_defaults():
    assert AUDIO_RATE == 16000
    assert LogMelFeatures().sample_rate == Wav2VecFeatures.sample_rate == AUDIO_RATE
    for fn in (resample, StreamingResampler.__init__):
        assert inspect.signature(fn).parameters["out_rate"].default == AUDIO_RATE


def test_rope_table_len_is_the_position_limit():
    assert PositionPolicy().limit == PositionPolicy.limit == ModelConfig().rope_table_len == 45000
