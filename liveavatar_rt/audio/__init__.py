"""Audio front end: PCM validation, streaming resampling to 16 kHz, 50 Hz features, alignment
to 25 fps video frames, and the per-block AudioStream a session consumes."""
from .align import StreamingAligner, align_fixed_rate, align_offline, published_num_clips
from .features import LogMelFeatures, LogMelStream, mel_filterbank
from .pcm import as_mono_float32, check_sample_rate
from .resample import StreamingResampler, resample
from .stream import AudioNotReady, AudioStream
from .wav2vec import Wav2VecFeatures

__all__ = [
    "AudioNotReady", "AudioStream", "LogMelFeatures", "LogMelStream", "StreamingAligner",
    "StreamingResampler", "Wav2VecFeatures", "align_fixed_rate", "align_offline", "as_mono_float32",
    "check_sample_rate", "mel_filterbank", "published_num_clips", "resample",
]
