import importlib.util

import numpy as np
import pytest
import torch

from liveavatar_rt.audio import Wav2VecFeatures


@pytest.mark.skipif(importlib.util.find_spec("transformers") is not None, reason="transformers is installed")
def test_missing_transformers_names_the_package(tmp_path):
    with pytest.raises(ImportError, match="pip install transformers"):
        Wav2VecFeatures(tmp_path)


def test_all_hidden_states_at_50hz(tmp_path):
    tf = pytest.importorskip("transformers", reason="wav2vec2 runs through transformers")
    cfg = tf.Wav2Vec2Config(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=24,
                            conv_dim=(8,) * 7, vocab_size=12, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)
    torch.manual_seed(0)
    tf.Wav2Vec2ForCTC(cfg).save_pretrained(str(tmp_path))
    tf.Wav2Vec2FeatureExtractor().save_pretrained(str(tmp_path))
    feats = Wav2VecFeatures(tmp_path)
    out = feats(np.sin(np.arange(16000) / 7.0).astype(np.float32))
    assert out.shape == (4, 16, (16000 - 400) // 320 + 1)  # layers = hidden layers + embeddings
    assert torch.isfinite(out).all()
    with pytest.raises(FileNotFoundError, match="config.json"):
        Wav2VecFeatures(tmp_path / "nope")
