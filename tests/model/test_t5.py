"""umT5 text encoder: parity with transformers' UMT5EncoderModel, the bf16 path, checkpoint
loading and its errors, the tokenizer (a tiny sentencepiece model trained here) and the
prompt -> embedding TextEncoder. Nothing is downloaded."""
from __future__ import annotations

import sys

import pytest
import torch

from liveavatar_rt.io.text import CHECKPOINT_NAME, TOKENIZER_SUBDIR, TextEncoder, Tokenizer, clean_prompt, load_umt5
from liveavatar_rt.model.t5 import UMT5Config, UMT5Encoder, _fp16_clamp, relative_buckets
from liveavatar_rt.ops import OpTable
from tests.t5_fixtures import train_tokenizer
from tests.tolerances import assert_close_rel

TINY = UMT5Config.preset("umt5-tiny")


def random_state_dict(cfg: UMT5Config, seed: int = 0) -> dict[str, torch.Tensor]:
    """fp32 weights with the published key names, scaled so attention, the position bias and
    the FFN all matter (not the published init, which makes tiny models nearly linear)."""
    g = torch.Generator().manual_seed(seed)
    model = UMT5Encoder(cfg)
    sd = {}
    for name, p in model.named_parameters():
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
            sd[name] = 1 + 0.2 * torch.randn(p.shape, generator=g)
        elif "embedding" in name:
            sd[name] = torch.randn(p.shape, generator=g)
        else:  # Linear [out, in]
            sd[name] = torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5
    return sd


def build(cfg: UMT5Config, sd: dict, dtype: torch.dtype = torch.float32) -> UMT5Encoder:
    model = UMT5Encoder(cfg, OpTable("cpu", dtype))
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, assign=True, strict=True)
    return model.eval().requires_grad_(False)


def to_hf(sd: dict, cfg: UMT5Config) -> dict[str, torch.Tensor]:
    """Published key names -> transformers UMT5EncoderModel key names."""
    out = {"shared.weight": sd["token_embedding.weight"], "encoder.embed_tokens.weight": sd["token_embedding.weight"],
           "encoder.final_layer_norm.weight": sd["norm.weight"]}
    for i in range(cfg.num_layers):
        a, f = f"encoder.block.{i}.layer.0.", f"encoder.block.{i}.layer.1."
        for n in "qkvo":
            out[a + f"SelfAttention.{n}.weight"] = sd[f"blocks.{i}.attn.{n}.weight"]
        out[a + "SelfAttention.relative_attention_bias.weight"] = sd[f"blocks.{i}.pos_embedding.embedding.weight"]
        out[a + "layer_norm.weight"] = sd[f"blocks.{i}.norm1.weight"]
        out[f + "layer_norm.weight"] = sd[f"blocks.{i}.norm2.weight"]
        out[f + "DenseReluDense.wi_0.weight"] = sd[f"blocks.{i}.ffn.gate.0.weight"]  # GELU branch
        out[f + "DenseReluDense.wi_1.weight"] = sd[f"blocks.{i}.ffn.fc1.weight"]  # linear branch
        out[f + "DenseReluDense.wo.weight"] = sd[f"blocks.{i}.ffn.fc2.weight"]
    return out


def hf_encoder(cfg: UMT5Config, sd: dict):
    tf = pytest.importorskip("transformers", reason="parity with transformers.UMT5EncoderModel needs transformers")
    hcfg = tf.UMT5Config(vocab_size=cfg.vocab_size, d_model=cfg.dim, d_kv=cfg.head_dim, d_ff=cfg.dim_ffn,
                         num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                         relative_attention_num_buckets=cfg.num_buckets,
                         relative_attention_max_distance=cfg.max_dist, dropout_rate=0.0,
                         layer_norm_epsilon=cfg.eps, feed_forward_proj="gated-gelu")
    hcfg._attn_implementation = "eager"
    model = tf.UMT5EncoderModel(hcfg).eval()
    missing, unexpected = model.load_state_dict(to_hf(sd, cfg), strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"encoder.embed_tokens.weight"}, missing
    return model


def batch(cfg: UMT5Config, lens=(13, 7, 1), L=16, seed=1):
    """Right-padded ids (pad 0, last real token </s> = 1) and their mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lens), L, dtype=torch.long)
    mask = torch.zeros(len(lens), L, dtype=torch.long)
    for b, n in enumerate(lens):
        ids[b, :n] = torch.randint(2, cfg.vocab_size, (n,), generator=g)
        ids[b, n - 1] = 1
        mask[b, :n] = 1
    return ids, mask


# ---- model ---------------------------------------------------------------------------------
def test_xxl_preset_builds_on_meta_with_published_keys():
    model = UMT5Encoder("umt5-xxl")
    params = dict(model.named_parameters())
    assert all(p.is_meta for p in params.values())
    assert 5.67e9 < sum(p.numel() for p in params.values()) < 5.69e9  # ~11.4 GB in bf16
    assert len(params) == 1 + 24 * 10 + 1  # 242 tensors in the published file
    assert params["token_embedding.weight"].shape == (256384, 4096)
    assert params["blocks.23.pos_embedding.embedding.weight"].shape == (32, 64)
    assert params["blocks.0.ffn.gate.0.weight"].shape == (10240, 4096)
    assert params["blocks.0.ffn.fc2.weight"].shape == (4096, 10240)
    assert {k for k in params if k.startswith("blocks.0.")} == {
        f"blocks.0.{n}" for n in ("norm1.weight", "norm2.weight", "attn.q.weight", "attn.k.weight", "attn.v.weight",
                                  "attn.o.weight", "ffn.gate.0.weight", "ffn.fc1.weight", "ffn.fc2.weight",
                                  "pos_embedding.embedding.weight")}
    with pytest.raises(RuntimeError, match="meta"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4))


def test_relative_buckets_cover_both_directions():
    b = relative_buckets(200, 200, 32, 128)
    assert b[0, 0] == 0 and b[5, 0] == 5 and b[0, 5] == 16 + 5  # exact buckets: keys before / after
    assert b[199, 0] == 15 and b[0, 199] == 31  # far distances clamp to the last bucket
    assert torch.equal(b.diagonal(1), torch.full((199,), 17))


def test_relative_buckets_match_transformers_at_xxl_settings():
    cfg = TINY.replace(num_buckets=32, max_dist=128, num_layers=1)
    attn = hf_encoder(cfg, random_state_dict(cfg)).encoder.block[0].layer[0].SelfAttention
    L = 512
    rel = torch.arange(L)[None, :] - torch.arange(L)[:, None]
    assert torch.equal(relative_buckets(L, L, 32, 128), attn._relative_position_bucket(rel))


@pytest.mark.parametrize("cfg", [TINY, TINY.replace(dim_attn=48, max_dist=16)], ids=["tiny", "attn48-dist16"])
def test_fp32_matches_transformers_umt5(cfg):
    sd = random_state_dict(cfg)
    ids, mask = batch(cfg, lens=(20, 9, 1), L=24)
    ours = build(cfg, sd)(ids, mask)
    with torch.no_grad():
        ref = hf_encoder(cfg, sd)(input_ids=ids, attention_mask=mask).last_hidden_state
    assert ours.dtype == torch.float32
    got_abs, got_rel = assert_close_rel(ours, ref, rel_l2=1e-5, max_abs=1e-4, name=f"umT5 fp32 vs transformers ({cfg})")
    print(f"umT5 fp32 vs transformers: max_abs {got_abs:.3e}, rel_l2 {got_rel:.3e}, |ref| max {ref.abs().max():.3g}")


def test_encode_returns_real_lengths_and_trim_is_exact():
    sd = random_state_dict(TINY)
    model = build(TINY, sd)
    ids, mask = batch(TINY, lens=(13, 7, 1), L=TINY.text_len)
    full = model(ids, mask)
    trimmed = model.encode(ids, mask)
    untrimmed = model.encode(ids, mask, trim=False)
    assert [t.shape for t in trimmed] == [(13, TINY.dim), (7, TINY.dim), (1, TINY.dim)]
    for b, (t, u) in enumerate(zip(trimmed, untrimmed)):
        assert torch.equal(u, full[b, : t.shape[0]])
        torch.testing.assert_close(t, u, rtol=1e-5, atol=1e-5)  # fp32 summation order only
    # real tokens do not see the padding: other pad ids change nothing
    ids2 = ids.masked_fill(mask == 0, 5)
    for t, u in zip(trimmed, model.encode(ids2, mask, trim=False)):
        torch.testing.assert_close(t, u, rtol=1e-5, atol=1e-5)


def test_bf16_path_is_within_bf16_tolerance_of_fp32():
    sd = random_state_dict(TINY)
    ids, mask = batch(TINY, lens=(13, 7, 1), L=16)
    ref = build(TINY, sd, torch.float32)(ids, mask)
    model = build(TINY, sd, torch.bfloat16)
    out = model(ids, mask)
    assert out.dtype == torch.bfloat16
    assert_close_rel(out, ref, rel_l2=3e-2, max_abs=0.1 * ref.abs().max().item(), name="umT5 bf16 vs fp32")
    # the published linear rule: bf16 inputs, fp32 accumulation, one rounding
    x = torch.randn(3, TINY.dim).to(torch.bfloat16)
    q = model.blocks[0].attn.q
    want = (x.float() @ q.weight.float().t()).to(torch.bfloat16)
    torch.testing.assert_close(q(x), want, rtol=1e-2, atol=1e-2)


def test_bf16_matches_transformers_bf16():
    """transformers' eager UMT5 with bf16 weights follows the same pure-bf16 rules as the
    published model (bf16 GEMMs with fp32 accumulation, fp32 softmax and RMS statistic, bf16
    elementwise ops): agreement to about one bf16 ulp (bit-exact with the `native` linear)."""
    sd = random_state_dict(TINY)
    ids, mask = batch(TINY, lens=(13, 7, 1), L=16)
    ours = build(TINY, sd, torch.bfloat16)(ids, mask)
    with torch.no_grad():
        ref = hf_encoder(TINY, sd).to(torch.bfloat16)(input_ids=ids, attention_mask=mask).last_hidden_state
    got_abs, got_rel = assert_close_rel(ours, ref, rel_l2=2e-3, max_abs=0.05, name="umT5 bf16 vs transformers bf16")
    print(f"umT5 bf16 vs transformers bf16: max_abs {got_abs:.3e}, rel_l2 {got_rel:.3e}")


def test_fp16_clamp_only_on_inf():
    x = torch.tensor([1.0, float("inf"), -float("inf"), 65000.0], dtype=torch.float16)
    assert torch.equal(_fp16_clamp(x), torch.tensor([1.0, 64504.0, -64504.0, 64504.0], dtype=torch.float16))
    y = torch.tensor([1.0, 65000.0], dtype=torch.float16)
    assert _fp16_clamp(y) is y
    z = torch.tensor([float("inf")], dtype=torch.bfloat16)
    assert torch.equal(_fp16_clamp(z), z)


# ---- checkpoint ----------------------------------------------------------------------------
@pytest.fixture()
def tiny_pth(tmp_path):
    sd = {k: v.to(torch.bfloat16) for k, v in random_state_dict(TINY).items()}
    path = tmp_path / CHECKPOINT_NAME
    torch.save(sd, path)
    return path, sd


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_load_umt5(tiny_pth, dtype):
    path, sd = tiny_pth
    model = load_umt5(path, TINY, dtype=dtype)
    params = dict(model.named_parameters())
    assert set(params) == set(sd)
    for k, v in sd.items():
        assert params[k].dtype == dtype and not params[k].requires_grad
        assert torch.equal(params[k], v.to(dtype)), k
    assert model.ops.dtype == dtype and not model.training
    ids, mask = batch(TINY)
    assert torch.equal(model(ids, mask), build(TINY, sd, dtype)(ids, mask))


def test_load_umt5_streams_memory_mapped(tiny_pth, monkeypatch):
    """The checkpoint is memory-mapped (an 11 GB file must not need 2x RAM) and loaded safely."""
    path, _ = tiny_pth
    calls, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    load_umt5(path, TINY, dtype=torch.bfloat16)
    assert calls and calls[0].get("mmap") is True and calls[0].get("weights_only") is True


def test_load_umt5_errors(tiny_pth, tmp_path):
    path, sd = tiny_pth
    missing_file = tmp_path / "nope" / CHECKPOINT_NAME
    with pytest.raises(FileNotFoundError, match="nope"):
        load_umt5(missing_file, TINY)

    bad = dict(sd)
    del bad["blocks.1.ffn.fc1.weight"]
    bad["blocks.1.ffn.extra.weight"] = torch.zeros(2)
    bad["blocks.0.attn.q.weight"] = torch.zeros(32, TINY.dim)
    p = tmp_path / "bad.pth"
    torch.save(bad, p)
    with pytest.raises(ValueError) as err:
        load_umt5(p, TINY)
    msg = str(err.value)
    assert "missing keys (1): ['blocks.1.ffn.fc1.weight']" in msg
    assert "unexpected keys (1): ['blocks.1.ffn.extra.weight']" in msg
    assert "blocks.0.attn.q.weight: checkpoint (32, 64) vs model (64, 64)" in msg

    torch.save({"model": sd}, p)
    with pytest.raises(TypeError, match="flat state dict"):
        load_umt5(p, TINY)


# ---- tokenizer -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A ~100-piece unigram sentencepiece model (T5 ids: pad 0, </s> 1, unk 2) saved as a
    transformers T5 tokenizer folder."""
    pytest.importorskip("sentencepiece", reason="training the test tokenizer needs sentencepiece")
    pytest.importorskip("transformers", reason="the Tokenizer wraps a transformers tokenizer")
    folder = tmp_path_factory.mktemp("ckpt")
    tok_dir = folder / TOKENIZER_SUBDIR
    sp = train_tokenizer(tok_dir)
    return folder, tok_dir, sp


def test_clean_prompt_whitespace():
    assert clean_prompt("  A\tbig \n\n cat &amp;amp; dog  ") == "A big cat & dog"
    assert clean_prompt(" x  y ", None) == " x  y "


def test_clean_prompt_uses_ftfy_when_installed(monkeypatch):
    import types

    fake = types.SimpleNamespace(fix_text=lambda t: t.replace("\u201c", '"').replace("\u201d", '"'))
    monkeypatch.setitem(sys.modules, "ftfy", fake)
    assert clean_prompt(" \u201chi\u201d  there ") == '"hi" there'


def test_tokenizer_names_missing_packages(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="pip install transformers sentencepiece"):
        Tokenizer(tmp_path)


def test_tokenizer_pads_truncates_and_cleans(tokenizer_dir):
    _, tok_dir, sp = tokenizer_dir
    tok = Tokenizer(tok_dir, seq_len=24)
    ids, mask = tok(["A woman talks.", "  He looks at\n\nthe   viewer &amp; smiles. " * 3])
    assert ids.shape == mask.shape == (2, 24) and ids.dtype == mask.dtype == torch.long
    n = int(mask[0].sum())
    assert ids[0, :n].tolist() == sp.encode("A woman talks.") + [1]  # </s> appended
    assert mask[0, :n].eq(1).all() and mask[0, n:].eq(0).all() and ids[0, n:].eq(0).all()
    assert mask[1].eq(1).all() and ids[1, -1] == 1  # truncated to seq_len, still ends with </s>
    cleaned = clean_prompt("  He looks at\n\nthe   viewer &amp; smiles. " * 3)
    assert ids[1, :-1].tolist() == sp.encode(cleaned)[:23]
    i2, m2 = tok("A woman talks.")
    assert torch.equal(i2[0], ids[0]) and torch.equal(m2[0], mask[0])
    with pytest.raises(FileNotFoundError, match="no_such_tokenizer"):
        Tokenizer(tok_dir.parent / "no_such_tokenizer")


def test_text_encoder_end_to_end(tokenizer_dir, tiny_pth):
    folder, tok_dir, sp = tokenizer_dir
    path, sd = tiny_pth
    (folder / CHECKPOINT_NAME).write_bytes(path.read_bytes())
    enc = TextEncoder(folder, dtype=torch.float32, config=TINY, cache_size=2)
    prompt = "A woman is   talking to the camera."
    out = enc(prompt)
    lt = len(sp.encode(clean_prompt(prompt))) + 1
    assert out.shape == (lt, TINY.dim) and out.dtype == torch.float32
    ids, mask = Tokenizer(tok_dir, seq_len=TINY.text_len)(prompt)
    assert ids.shape == (1, TINY.text_len)
    full = build(TINY, sd)(ids, mask)[0, :lt]
    torch.testing.assert_close(out, full, rtol=1e-6, atol=1e-6)
    assert enc(prompt) is out  # cached
    enc("one"), enc("two")
    assert prompt not in enc._cache and len(enc._cache) == 2  # LRU of 2
    bf = TextEncoder((folder / CHECKPOINT_NAME, tok_dir), dtype=torch.bfloat16, config=TINY)
    assert bf(prompt).shape == (lt, TINY.dim) and bf(prompt).dtype == torch.bfloat16
