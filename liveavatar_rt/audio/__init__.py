"""Audio front end: PCM validation, streaming resampling to 16 kHz, 50 Hz features, alignment
to 25 fps video frames, and the per-block streams a session consumes (AudioStream: log-mel;
WindowedAudioStream: windowed wav2vec2; OfflineAudioStream: the published whole-utterance path)."""
from .align import StreamingAligner, align_fixed_rate, align_offline, published_num_clips
from .features import LogMelFeatures, LogMelStream, mel_filterbank
from .pcm import as_mono_float32, check_sample_rate
from .resample import StreamingResampler, resample
from .stream import AudioNotReady, AudioStream
from .wav2vec import Wav2VecFeatures
from .windowed import AudioWindow, WindowedAudioStream

__all__ = [
    "AudioNotReady", "AudioStream", "AudioWindow", "WindowedAudioStream", "LogMelFeatures", "LogMelStream", "StreamingAligner",
    "StreamingResampler", "Wav2VecFeatures", "align_fixed_rate", "align_offline", "as_mono_float32",
    "check_sample_rate", "mel_filterbank", "published_num_clips", "resample",
]
