"""Run a golden Live Avatar fixture set (format of ../shared/golden/liveavatar_tiny) through the
public loading path and the engine's block stepper, and compare with the recorded outputs.

Everything about the run (sizes, cache window, clips, seeds, forced sink offset, LoRA scale,
timesteps) is read from the fixture's config.json, never hard-coded here.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from liveavatar_rt.config import StreamConfig
from liveavatar_rt.engine import BlockStepper, SinkOffsets, StepRow
from liveavatar_rt.io import load_dit, published_config, read_safetensors
from liveavatar_rt.ops import OpTable
from liveavatar_rt.ops.kv_fp8 import dequantize_kv
from tests.tolerances import rel_err

REPO = Path(__file__).resolve().parents[2]
GOLDEN_DIR = Path(os.environ.get("LIVEAVATAR_GOLDEN_DIR", REPO.parent / "shared" / "golden" / "liveavatar_tiny"))

# (rel_l2, max_abs) per variant, from the fixture README: fp32 must match the published fp32 run
# to arithmetic noise; bf16 to bf16 rounding noise. Two valid bf16 GEMMs (fp32-accumulate vs
# oneDNN) differ by ~0.4% rel L2 on this model, so bf16 parity cannot be tighter than ~1%.
# fp8: the published outputs_fp8 are 3.5 % (velocity) / 2.1 % (latent) / 3.8 % (cond_k) rel L2
# from bf16. The README's "<~1 %" cannot hold for any implementation that is not bit-identical:
# each bf16 rounding difference upstream (~0.4-0.6 % from the accumulation order alone, see the
# bf16 bound) is re-quantized to E4M3, whose step is 16x bf16's, so a flipped rounding costs a
# whole E4M3 step. Measured here: the fp8 reference vs torch._scaled_mm in the same runtime
# differ by 1.8 % rel L2 in velocity, and this runtime vs outputs_fp8 by 1.8 % / 0.9 % (latent) /
# max_abs 0.14. 2.5 % / 0.2 sits above that and below bf16's 3.5 % / 0.25; the first-layer
# conditioning K/V (before any amplification) carry the sharp check (FIRST_LAYER: 0 measured,
# bf16 is 3.8 % off).
FP8_BOUND = (2.5e-2, 0.2)
THRESHOLDS = {"fp32": (1e-4, 1e-4), "bf16": (1e-2, 0.1), "fp8": FP8_BOUND}
# Layer-0 conditioning K/V come before any attention, so bf16 noise has not been amplified yet:
# they match the published bits (measured 0 error), and a rare 1-ulp difference from another
# accumulation order stays far below 1e-3 rel L2. This is what catches bf16-only rules such as
# norm1's rounding (dropping it gives ~4e-3).
FIRST_LAYER = {"cond_k_layer0": (1e-3, 0.05), "cond_v_layer0": (1e-3, 0.05)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8": torch.bfloat16}
PRECISIONS = {"fp8": "fp8"}  # variant -> load_dit precision (default bf16)


@dataclass
class GoldenRun:
    velocity: torch.Tensor  # [blocks, steps, 16, F, h, w]
    latent: torch.Tensor
    cond_k0: torch.Tensor
    cond_v0: torch.Tensor
    audio: dict
    ring_k0: torch.Tensor | None
    ring_v0: torch.Tensor | None


def settings(golden: Path = GOLDEN_DIR) -> dict:
    return json.loads((golden / "config.json").read_text())


def run(variant: str, golden: Path = GOLDEN_DIR, blocks: int | None = None, force=None,
        lora_scale: float | None = None, cfg_override: dict | None = None, precision: str | None = None,
        kv_dtype: torch.dtype | None = None, pipelined: bool = False) -> GoldenRun:
    """precision: override the variant's (e.g. run bf16 weights against the fp8 outputs);
    kv_dtype: the caches' storage (E4M3: the fp8 KV cache; the cache tensors returned are then
    dequantized to the compute dtype); pipelined: the blocks in the pipelined schedule's order
    (engine/pipelined.py: each forward takes the next step of every block in flight)."""
    conf = settings(golden)
    p = conf["pipeline"]
    dtype = DTYPES[variant]
    cfg = published_config(golden)
    if cfg_override:
        cfg = cfg.replace(**cfg_override)
    scale = conf["lora"]["scaling"] if lora_scale is None else lora_scale
    ops = OpTable("cpu", dtype, force=force)
    model = load_dit(golden / conf["weights"]["file"], cfg, dtype=dtype, lora=golden / conf["lora"]["file"],
                     lora_scale=scale, ops=ops, precision=precision or PRECISIONS.get(variant, "bf16"))
    F = p["num_frames_per_block"]
    stream = StreamConfig(frames_per_block=F, blocks_per_clip=p["blocks_per_clip"],
                          cache_frames=p["kv_cache_size_latent_frames"], sampling_steps=p["sampling_steps"],
                          motion_frames=p["motion_frames_pixel"], motion_latent_frames=p["motion_frames_latent"],
                          audio_prefix_frames=p["motion_frames_pixel"])
    st = BlockStepper(model, stream, tuple(p["latent_size_hw"]), offsets=SinkOffsets(fixed=p["sink_relative_dist_forced"]),
                      kv_dtype=kv_dtype)
    inp = read_safetensors(golden / "inputs.safetensors")
    st.set_text(inp["text_context"].to(dtype))
    st.prefill(inp["ref_latent"].to(dtype), inp["motion_latents"].to(dtype))
    n_blocks = p["num_clips"] * p["blocks_per_clip"] if blocks is None else blocks
    audio_per_block = p["audio"]["audio_frames_per_block"]
    vel, lat, audio, ring = [], [], {}, (None, None)

    def features(b: int) -> torch.Tensor:
        clip, k = divmod(b, p["blocks_per_clip"])
        a0 = clip * p["infer_frames"] + k * audio_per_block
        return inp["audio_emb"][..., a0:a0 + audio_per_block].to(dtype)

    if pipelined:
        traces = _pipelined_traces(st, n_blocks, features, inp["noise"].to(dtype), inp["cond_states"].to(dtype))
    for b in range(n_blocks):
        feats = features(b)
        tok, glob = st.audio(feats)
        audio[b] = (tok, glob)
        if pipelined:
            trace = traces[b]
        else:
            trace = []
            st.denoise(inp["noise"][b:b + 1].to(dtype), b, feats, inp["cond_states"].to(dtype), trace=trace)
        vel.append(torch.stack([v[0] for v, _ in trace]))
        lat.append(torch.stack([x[0] for _, x in trace]))
        if b == 5 and not pipelined:  # (pipelined: the ring has moved on by the time this runs)
            ring = _stored(st.rings[0].layer(0), dtype)
    return GoldenRun(torch.stack(vel), torch.stack(lat), *_stored((st.cond.k[0], st.cond.v[0], st.cond.ks[0],
                                                                   st.cond.vs[0]), dtype), audio, *ring)


def _pipelined_traces(st: BlockStepper, n_blocks: int, features, noise: torch.Tensor,
                      cond_states: torch.Tensor) -> dict[int, list]:
    """Blocks 0..n_blocks-1 in the pipelined schedule (TPP order: a new block joins each
    forward, every block in flight takes its next step) -> {block: [(velocity, latent)] per step}."""
    steps = len(st.steps)
    flight, traces = [], {}
    for fwd in range(n_blocks + steps - 1):
        if fwd < n_blocks:
            flight.append({"b": fwd, "x": noise[fwd:fwd + 1], "audio": st.audio(features(fwd))})
            traces[fwd] = []
        rows = [StepRow(st.steps[len(traces[f["b"]])], f["b"], f["x"], f["audio"], cond_states) for f in flight]
        for f, (v, x) in zip(flight, st.step_rows(rows)):
            f["x"] = x
            traces[f["b"]].append((v, x))
        flight = [f for f in flight if len(traces[f["b"]]) < steps]
    return traces


def _stored(kv: tuple, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(k, v) of a cache layer as the compute dtype sees them: (k, v, None, None) as they are,
    fp8 (k8, v8, k scales, v scales) dequantized."""
    k, v, ks, vs = (*kv, None, None)[:4]
    if ks is None:
        return k.clone(), v.clone()
    return dequantize_kv(k, ks, dtype), dequantize_kv(v, vs, dtype)


def expected(variant: str, golden: Path = GOLDEN_DIR) -> dict:
    return read_safetensors(golden / f"outputs_{variant}.safetensors")


def parity_failures(res: GoldenRun, variant: str, golden: Path = GOLDEN_DIR) -> list[str]:
    """Every recorded output the run does not reproduce within the variant's thresholds."""
    exp = expected(variant, golden)
    n = res.velocity.shape[0]
    pairs = {
        "velocity": (res.velocity, exp["velocity"][:n]),
        "latent_after_step": (res.latent, exp["latent_after_step"][:n]),
        "cond_k_layer0": (res.cond_k0, exp["cond_k_layer0"]),
        "cond_v_layer0": (res.cond_v0, exp["cond_v_layer0"]),
    }
    for b, (tok, glob) in res.audio.items():
        if f"audio_emb_block{b}" in exp:
            pairs[f"audio_emb_block{b}"] = (tok, exp[f"audio_emb_block{b}"])
            pairs[f"audio_emb_global_block{b}"] = (glob, exp[f"audio_emb_global_block{b}"])
    if res.ring_k0 is not None and "cache_k_layer0_step0_after_block5" in exp:
        pairs["cache_k_layer0_step0_after_block5"] = (res.ring_k0, exp["cache_k_layer0_step0_after_block5"])
        pairs["cache_v_layer0_step0_after_block5"] = (res.ring_v0, exp["cache_v_layer0_step0_after_block5"])
    out = []
    for name, (a, e) in pairs.items():
        rel_l2, max_abs = FIRST_LAYER.get(name, THRESHOLDS[variant]) if variant != "fp32" else THRESHOLDS[variant]
        if tuple(a.shape) != tuple(e.shape):
            out.append(f"{name}: shape {tuple(a.shape)} vs {tuple(e.shape)}")
            continue
        m, r = rel_err(a, e)
        if not (m <= max_abs and r <= rel_l2):
            out.append(f"{name}: max_abs {m:.3g} (<= {max_abs}), rel_l2 {r:.3g} (<= {rel_l2})")
    return out
