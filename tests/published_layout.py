"""Build a tiny model directory in the published layout (every file the 14B path reads), with
random weights: DiT config + 2 shards + index, Live Avatar LoRA, Wan2.1 VAE .pth, umT5 .pth +
tokenizer folder, wav2vec2 folder. Needs transformers + sentencepiece (test dependencies)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from liveavatar_rt.config import from_name
from liveavatar_rt.model import CausalWanS2V
from liveavatar_rt.model.init import init_random_
from liveavatar_rt.model.t5 import UMT5Config
from liveavatar_rt.model.vae import VAEConfig, WanVAE
from liveavatar_rt.ops import OpTable

DIT = from_name("tiny")
# text_dim is fixed at 4096 by the published loader, so the umT5 keeps dim 4096 and shrinks the rest
UMT5 = dataclasses.replace(UMT5Config.preset("umt5-tiny"), dim=4096, dim_attn=64, dim_ffn=64, num_heads=2, num_layers=1)


def build(root: Path, seed: int = 0) -> Path:
    import transformers as tf

    from tests.model.test_t5 import random_state_dict
    from tests.t5_fixtures import train_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    dit = init_random_(CausalWanS2V(DIT, OpTable("cpu", torch.float32)), seed=seed)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in dit.state_dict().items()}
    keys = sorted(state)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[::2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, root / name)
    (root / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: n for n, ks in shards.items() for k in ks}}))
    (root / "config.json").write_text(json.dumps({
        "_class_name": "CausalWanModel_S2V", "dim": DIT.dim, "ffn_dim": DIT.ffn_dim, "num_heads": DIT.num_heads,
        "num_layers": DIT.num_layers, "text_len": DIT.text_len, "audio_dim": DIT.audio_dim, "num_audio_token": 4,
        "audio_inject_layers": list(DIT.audio_inject_layers), "enable_adain": True, "enable_framepack": True,
        "framepack_drop_mode": "padd", "zero_timestep": True, "cond_dim": 16}))
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for mod in ("blocks.0.self_attn.q", "blocks.1.ffn.0", "audio_injector.injector.0.k"):
        out_f, in_f = state[f"{mod}.weight"].shape
        lora[f"base_model.model.{mod}.lora_A.default.weight"] = (torch.randn(4, in_f, generator=g) * 0.05).bfloat16()
        lora[f"base_model.model.{mod}.lora_B.default.weight"] = (torch.randn(out_f, 4, generator=g) * 0.05).bfloat16()
    save_file(lora, root / "liveavatar.safetensors")
    vae = WanVAE(VAEConfig(dim=8), dtype=torch.float32).init_random_(seed)
    torch.save({k: v.clone() for k, v in vae.state_dict().items()}, root / "Wan2.1_VAE.pth")
    torch.save({k: v.bfloat16() for k, v in random_state_dict(UMT5, seed).items()}, root / "models_t5_umt5-xxl-enc-bf16.pth")
    train_tokenizer(root / "google" / "umt5-xxl")
    w2v = tf.Wav2Vec2Config(hidden_size=DIT.audio_dim, num_hidden_layers=DIT.audio_layers - 1, num_attention_heads=2,
                            intermediate_size=48, conv_dim=(16,) * 7, vocab_size=32, num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=2, do_stable_layer_norm=True, feat_extract_norm="layer")
    torch.manual_seed(seed)
    tf.Wav2Vec2ForCTC(w2v).save_pretrained(str(root / "wav2vec2-large-xlsr-53-english"))
    tf.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(
        str(root / "wav2vec2-large-xlsr-53-english"))
    return root
