"""Text conditioning: umT5 checkpoint loading, the published tokenizer, and a prompt encoder.

Everything is read from LOCAL files; nothing is downloaded. `transformers` (tokenizer) is an
optional dependency imported lazily; `ftfy` (part of the published cleaning) is used when it is
installed (see `clean_prompt`).

Published layout (`checkpoint_dir`): `models_t5_umt5-xxl-enc-bf16.pth` (encoder state dict,
bf16, ~11 GB) and the tokenizer folder `google/umt5-xxl`; text_len 512.
"""
from __future__ import annotations

import dataclasses
import html
import logging
import os
from collections import OrderedDict
from pathlib import Path

import torch

from ..model.t5 import UMT5Config, UMT5Encoder
from ..ops import OpTable
from .fill import fill_module

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_SUBDIR = "google/umt5-xxl"


def _config(config: UMT5Config | str | None) -> UMT5Config:
    if config is None:
        return UMT5Config.preset("umt5-xxl")
    return UMT5Config.preset(config) if isinstance(config, str) else config


def _read_state_dict(path: Path) -> dict:
    """torch.load memory-mapped (tensors are paged in from the file, not copied to RAM)."""
    try:
        sd = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc) and "zipfile" not in str(exc):
            raise
        log.warning("%s is in the legacy torch.save format (no mmap); reading it into RAM", path)
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise TypeError(f"{path} does not hold a flat state dict of tensors (got {type(sd).__name__})")
    return sd


def load_umt5(pth_path: str | os.PathLike, config: UMT5Config | str | None = None,
              dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
              ops: OpTable | None = None) -> UMT5Encoder:
    """Build `UMT5Encoder(config)` on the meta device and fill it from a `.pth` state dict with
    the published key names, one tensor at a time (cast to `dtype`, moved to `device`, assigned).

    The file is memory-mapped, so a bf16 checkpoint loaded as bf16 on CPU is never copied (the
    parameters are backed by the page cache); other dtypes/devices hold one copy, built tensor
    by tensor. Errors name every missing / unexpected key and every shape mismatch.
    """
    path = Path(pth_path)
    if not path.is_file():
        raise FileNotFoundError(f"umT5 checkpoint {str(path)!r} does not exist")
    cfg = _config(config)
    ops = ops if ops is not None else OpTable(device, dtype)
    model = UMT5Encoder(cfg, ops)
    sd = _read_state_dict(path)

    def drain():  # drop each file-backed reference as soon as it is consumed
        for key in list(sd):
            yield key, sd.pop(key)

    return fill_module(model, drain(), lambda key, t: t.to(device=device, dtype=dtype),
                       f"umT5 checkpoint {path} does not fit the encoder {cfg}")


# ---- tokenizer --------------------------------------------------------------------------------
_warned_ftfy = False


def clean_prompt(text: str, clean: str | None = "whitespace") -> str:
    """Published cleaning. 'whitespace': ftfy.fix_text, html.unescape twice, strip, then every
    run of whitespace -> one space, strip. None: unchanged.

    ftfy (mojibake repair, curly quotes -> straight, ...) is applied when installed; without it
    the rest is applied and a warning is logged once, since prompts ftfy would change then
    tokenize differently from the published code (`pip install ftfy`).
    """
    if clean is None:
        return text
    if clean != "whitespace":
        raise ValueError(f"clean={clean!r}: only 'whitespace' (published) and None are supported")
    try:
        import ftfy
    except ImportError:
        global _warned_ftfy
        if not _warned_ftfy:
            log.warning("ftfy is not installed: prompt cleaning skips ftfy.fix_text (pip install ftfy)")
            _warned_ftfy = True
    else:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    try:  # the published pattern uses the `regex` module (a transformers dependency)
        import regex as re
    except ImportError:
        import re
    return re.sub(r"\s+", " ", text).strip()


def _import_transformers(what: str):
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(f"{what} needs the optional packages 'transformers' and 'sentencepiece' "
                          "(pip install transformers sentencepiece); transformers is not installed") from exc
    return transformers


class Tokenizer:
    """Tokenizer(folder, seq_len=512)(texts) -> (ids, mask), int64 [B, seq_len] each.

    folder: a LOCAL Hugging Face tokenizer folder (published: `google/umt5-xxl`). As published:
    cleaned text, special tokens added (`</s>` at the end), truncated to seq_len and padded to
    it on the right (pad id in `ids`, 0 in `mask`). seq_len=None pads to the longest text.
    """

    def __init__(self, folder: str | os.PathLike, seq_len: int | None = 512, clean: str | None = "whitespace"):
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer folder {str(folder)!r} does not exist")
        if clean not in (None, "whitespace"):
            raise ValueError(f"clean={clean!r}: only 'whitespace' (published) and None are supported")
        tf = _import_transformers("Tokenizer")
        self.folder, self.seq_len, self.clean = folder, seq_len, clean
        self.tokenizer = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def __call__(self, texts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        texts = [clean_prompt(t, self.clean) for t in texts]
        if self.seq_len is None:
            kw = dict(padding="longest")
        else:
            kw = dict(padding="max_length", truncation=True, max_length=self.seq_len)
        enc = self.tokenizer(texts, add_special_tokens=True, return_tensors="pt", **kw)
        return enc["input_ids"].long(), enc["attention_mask"].long()


# ---- prompt -> embedding ----------------------------------------------------------------------
def _resolve(folder_or_files) -> tuple[Path, Path]:
    """(checkpoint .pth, tokenizer folder) from a checkpoint dir or a (pth, tokenizer) pair."""
    if isinstance(folder_or_files, (tuple, list)):
        if len(folder_or_files) != 2:
            raise ValueError(f"expected (checkpoint.pth, tokenizer_folder), got {folder_or_files!r}")
        return Path(folder_or_files[0]), Path(folder_or_files[1])
    d = Path(folder_or_files)
    if not d.is_dir():
        raise FileNotFoundError(f"text encoder folder {str(d)!r} does not exist")
    pth = d / CHECKPOINT_NAME
    if not pth.is_file():
        cands = sorted(p for p in d.glob("*.pth") if "t5" in p.name.lower())
        if len(cands) != 1:
            raise FileNotFoundError(f"{d} has no {CHECKPOINT_NAME} and {len(cands)} other '*t5*.pth' "
                                    f"files (need exactly one): {[p.name for p in cands]}")
        pth = cands[0]
    tok = d / TOKENIZER_SUBDIR
    if not tok.is_dir():
        if any((d / n).is_file() for n in ("tokenizer.json", "spiece.model", "tokenizer_config.json")):
            tok = d
        else:
            raise FileNotFoundError(f"{d} has no tokenizer folder {TOKENIZER_SUBDIR!r} (nor tokenizer files)")
    return pth, tok


class TextEncoder:
    """TextEncoder(checkpoint_dir or (pth, tokenizer_folder))(prompt) -> [Lt, dim] in `dtype`,
    Lt = the prompt's real token count (incl. `</s>`), as the pipeline passes it to the DiT.

    Results are kept in a small LRU cache keyed by the prompt string (`cache_size` entries;
    0 disables it); the cached tensor is returned as is, so do not modify it in place.
    """

    def __init__(self, folder_or_files, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                 config: UMT5Config | str | None = None, text_len: int | None = None, cache_size: int = 8,
                 ops: OpTable | None = None):
        pth, tok = _resolve(folder_or_files)
        cfg = _config(config)
        self.tokenizer = Tokenizer(tok, seq_len=text_len or cfg.text_len)
        self.model = load_umt5(pth, cfg, dtype, device, ops)
        if self.tokenizer.vocab_size > cfg.vocab_size:
            raise ValueError(f"tokenizer {tok} has {self.tokenizer.vocab_size} tokens, more than the "
                             f"encoder's vocab_size {cfg.vocab_size}")
        self.device = torch.device(device)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __call__(self, prompt: str) -> torch.Tensor:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        hit = self._cache.get(prompt)
        if hit is not None:
            self._cache.move_to_end(prompt)
            return hit
        ids, mask = self.tokenizer(prompt)
        out = self.model.encode(ids.to(self.device), mask.to(self.device))[0]
        if self.cache_size > 0:
            self._cache[prompt] = out
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out


def infer_umt5_config(pth_path: str | os.PathLike, text_len: int = 512) -> UMT5Config:
    """The encoder's sizes read off a published-key `.pth` (memory-mapped, nothing copied):
    vocab/dim from the token embedding, heads/buckets from the relative-position table,
    attention and FFN widths from layer 0. Lets a directory hold any umT5 size."""
    path = Path(pth_path)
    if not path.is_file():
        raise FileNotFoundError(f"umT5 checkpoint {str(path)!r} does not exist")
    sd = _read_state_dict(path)
    try:
        vocab, dim = sd["token_embedding.weight"].shape
        buckets, heads = sd["blocks.0.pos_embedding.embedding.weight"].shape
        dim_attn = sd["blocks.0.attn.q.weight"].shape[0]
        dim_ffn = sd["blocks.0.ffn.fc1.weight"].shape[0]
    except KeyError as exc:
        raise ValueError(f"{path} is not a umT5 encoder state dict with the published key names: missing {exc}") from None
    layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    xxl = UMT5Config.preset("umt5-xxl")
    return dataclasses.replace(xxl, vocab_size=vocab, dim=dim, dim_attn=dim_attn, dim_ffn=dim_ffn, num_heads=heads,
                               num_layers=layers, num_buckets=buckets, text_len=text_len)
