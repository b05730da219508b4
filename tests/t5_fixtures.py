"""Shared test fixtures for the umT5 text path: sentences and a tiny trained tokenizer."""
from __future__ import annotations

import io
from pathlib import Path

SENTENCES = [
    "A woman is talking to the camera in a bright room.", "The man smiles and nods slowly while speaking.",
    "Soft light falls on her face; she laughs quietly.", "He looks at the viewer and says hello to everyone.",
    "A portrait of a person speaking clearly, with natural head motion.",
    "Zebras jump over quick brown foxes; five boxing wizards vex Jack.", "Pack my box with twelve dozen liquor jugs!",
    "Cinematic close-up, warm colours, shallow depth of field, 4k video.", "Une femme parle doucement à la caméra.",
]


def train_tokenizer(tok_dir: Path):
    """A ~100-piece unigram sentencepiece model (T5 ids: pad 0, </s> 1, unk 2) trained on
    SENTENCES and saved as a transformers T5 tokenizer folder. Returns the sentencepiece model."""
    import sentencepiece as spm
    import transformers as tf

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(SENTENCES), model_writer=buf, vocab_size=100,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tf.T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(str(tok_dir))
    return sp
