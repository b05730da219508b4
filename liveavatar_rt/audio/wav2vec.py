"""wav2vec2 features for the 14B path (published: wav2vec2-large-xlsr-53-english, all 25
hidden states), loaded from a LOCAL folder only - nothing is downloaded.

Not streamable: wav2vec2 is bidirectional and its feature extractor normalises the whole
utterance (zero mean, unit variance), so features are computed over the complete audio and
aligned with `align_offline`, as the published pipeline does. `transformers` is imported
lazily (it is an optional dependency: `pip install transformers`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import AUDIO_RATE


def _import_transformers():
    try:
        import transformers
    except ImportError as exc:
        raise ImportError("Wav2VecFeatures needs the optional package 'transformers' "
                          "(pip install transformers); it is not installed") from exc
    return transformers


class Wav2VecFeatures:
    """Wav2VecFeatures(folder)(pcm16k [n] float) -> torch [25, hidden, T50] (layers, dim, time),
    T50 = (n - 400) // 320 + 1. dtype: the model's compute dtype (published: bfloat16)."""

    sample_rate, hop, win = AUDIO_RATE, 320, 400

    def __init__(self, folder, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        tf = _import_transformers()
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} is not a local wav2vec2 folder (no config.json)")
        self.processor = tf.Wav2Vec2FeatureExtractor.from_pretrained(str(folder), local_files_only=True)
        self.model = tf.Wav2Vec2ForCTC.from_pretrained(str(folder), local_files_only=True)
        self.model.to(device=device, dtype=dtype).eval()
        self.device, self.dtype = torch.device(device), dtype
        self.layers = self.model.config.num_hidden_layers + 1
        self.dim = self.model.config.hidden_size

    @torch.no_grad()
    def __call__(self, pcm16k, stats: tuple[float, float] | None = None) -> torch.Tensor:
        """stats: (mean, variance) to normalise with instead of the input's own (the feature
        extractor's zero-mean unit-variance rule, (x - mean) / sqrt(var + 1e-7)), e.g. running
        statistics of a stream; ignored when the folder's extractor does not normalise."""
        x = np.asarray(pcm16k, np.float32).reshape(-1)
        if stats is None:
            iv = self.processor(x, sampling_rate=self.sample_rate, return_tensors="pt").input_values
        else:
            if getattr(self.processor, "do_normalize", True):
                x = ((x - np.float32(stats[0])) / np.sqrt(np.float32(stats[1]) + np.float32(1e-7))).astype(np.float32)
            iv = torch.from_numpy(x)[None]
        res = self.model(iv.to(device=self.device, dtype=self.dtype), output_hidden_states=True)
        return torch.cat(res.hidden_states).permute(0, 2, 1).contiguous()  # [L, T, D] -> [L, D, T]
