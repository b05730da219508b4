"""Streaming wav2vec2 windows (issue 17): the deviation of windowed from offline features as the
window and the lookahead grow, on a randomly initialised wav2vec2 with the real
wav2vec2-large-xlsr-53 configuration (24 layers, 1024 wide; ~315 M parameters, built in a temp
folder: no weights are downloaded) and on the tests' tiny published-layout folder.

    .venv/bin/python bench/audio_window.py [--audio assets/example/speech.wav] [--windows 1,2,4,8]
        [--lookaheads 0.04,0.08,0.16,0.32] [--folder /tmp/w2v_large_random]

Prints the `liveavatar-rt audio-check` table for each (window sweep at the default lookahead,
lookahead sweep at the default window). With real weights run `liveavatar-rt audio-check` on
your own folder: a random network's attention is not a trained one's.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def large_random_folder(path: Path) -> Path:
    import torch
    import transformers as tf

    if (path / "config.json").is_file():
        return path
    cfg = tf.Wav2Vec2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                            conv_dim=(512,) * 7, do_stable_layer_norm=True, feat_extract_norm="layer",
                            num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, vocab_size=33)
    torch.manual_seed(0)
    tf.Wav2Vec2ForCTC(cfg).save_pretrained(str(path))
    tf.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(str(path))
    return path


def main() -> None:
    from liveavatar_rt.audio.check import main as check
    from liveavatar_rt.audio.windowed import AudioWindow

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--audio", default="assets/example/speech.wav")
    ap.add_argument("--windows", default="1,2,4,8")
    ap.add_argument("--lookaheads", default="0.04,0.08,0.16,0.32")
    ap.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "w2v_large_random"))
    a = ap.parse_args()
    large = large_random_folder(Path(a.folder))
    d = AudioWindow()
    with tempfile.TemporaryDirectory() as tmp:
        from tests.published_layout import build

        tiny = build(Path(tmp) / "published")
        for name, model, latent in [("tiny published-layout folder (tests)", tiny, "2"),
                                    ("random wav2vec2-large-xlsr-53 configuration", large, "0")]:
            print(f"\n== {name}: window sweep at lookahead {d.lookahead_s} s")
            check(["--model", str(model), "--audio", a.audio, "--windows", a.windows, "--lookahead",
                   str(d.lookahead_s), "--latent-blocks", latent])
            for look in a.lookaheads.split(","):
                print(f"-- lookahead {look} s, window {d.window_s} s")
                check(["--model", str(model), "--audio", a.audio, "--window", str(d.window_s), "--lookahead", look,
                       "--latent-blocks", latent])


if __name__ == "__main__":
    main()
