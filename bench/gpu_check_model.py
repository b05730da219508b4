"""Sections 4 and 6 of bench/gpu_check.py: the engine's BlockStepper on a model with the 14B
per-layer sizes and fewer layers (random weights, `init_random_`).

Section 4 (`check_graphs`): CUDA-graph replay == eager, bit for bit, over several blocks (the
ring filling, the first capture, replays, the sink re-prefill, a position rebase), as
tests/engine/test_graphs.py checks it with the tiny model. On CUDA the graph stepper is built
with StreamConfig(cuda_graphs=True) and the eager one with False; on CPU (dry run) the graph
stepper runs the uncaptured static formulation (StepGraphs(capture=False)), what gets captured.

Section 6 (`time_dit`): one denoising step (BlockStepper.step: forward + Euler update) on N
layers, once the ring is full, in bf16 and fp8 (model/fp8.py `to_fp8`), eager and with CUDA
graphs; extrapolated linearly to the preset's layers, then to each TPP layout's stage interval
and FPS with bench/TPP_MODEL.md's formulas (`layout_model`).
"""
from __future__ import annotations

import statistics
import time

import torch

from liveavatar_rt.benchmark.flops import step_flops
from liveavatar_rt.config import PRESETS, ModelConfig, StreamConfig
from liveavatar_rt.engine import BlockStepper, PositionPolicy, SinkOffsets
from liveavatar_rt.engine.graphs import StepGraphs
from liveavatar_rt.model import CausalWanS2V
from liveavatar_rt.model.fp8 import to_fp8
from liveavatar_rt.model.init import init_random_
from liveavatar_rt.model.vae import VAEConfig, WanVAE
from liveavatar_rt.ops import OpTable

STREAM = StreamConfig()
# The ring is full from this block on (cache_frames / frames_per_block - 1 = 3): the first
# block a graph stepper captures (its warm-up run is the block's result); replays follow.
FILL_BLOCK = STREAM.cache_frames // STREAM.frames_per_block - 1
# As tests/engine/test_graphs.py: positions rebase by 12 frames once a block passes frame 24.
REBASE_POLICY = PositionPolicy("bounded", limit=24, period=12)
SINK_BLOCK = 4  # the sink replacement: a re-prefill with block 0's first latent frame
TEXT_TOKENS = 32  # text K/V zero-pads to text_len, so the prompt length does not change the cost
ASSUMED_VAE_S = 0.15  # bench/TPP_MODEL.md: t_vae ~0.10-0.20 s at 384x704, 3 latent frames
ASSUMED_HOP_S = 50e-6  # bench/TPP_MODEL.md: NCCL p2p of one block on NVLink, ~30-60 us
LAYOUTS = {"4+1": (4, True), "2+1": (2, True), "4": (4, False), "1": (1, False)}  # (DiT ranks, own VAE rank)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def layer_config(preset: str, layers: int) -> ModelConfig:
    """The preset's sizes with `layers` blocks; audio injectors on the preset's layers below
    `layers` (the 14B has 12 of 40; 4 layers keep 1: layer 0)."""
    base = PRESETS[preset]
    inject = tuple(i for i in base.audio_inject_layers if i < layers) or (0,)
    return base.replace(num_layers=layers, audio_inject_layers=inject)


def build_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int = 0) -> CausalWanS2V:
    """Seeded random weights straight onto `device` (built on meta, one parameter at a time)."""
    return init_random_(CausalWanS2V(cfg, OpTable(device, dtype)), seed=seed, device=device)


def new_stepper(model: CausalWanS2V, hw: tuple[int, int], graphs: bool, positions: PositionPolicy | None = None,
                seed: int = 0) -> BlockStepper:
    """A stepper with text and conditioning set. graphs: StreamConfig(cuda_graphs=True) on CUDA,
    the uncaptured static formulation on CPU; else StreamConfig(cuda_graphs=False)."""
    device = model.ops.device
    cuda = device.type == "cuda"
    st = BlockStepper(model, StreamConfig(cuda_graphs=bool(graphs and cuda)), hw,
                      offsets=SinkOffsets(seed=seed), positions=positions or PositionPolicy())
    if graphs and not cuda:
        st.graphs = StepGraphs(device, capture=False)
    g = torch.Generator().manual_seed(seed)
    st.set_text(torch.randn(min(TEXT_TOKENS, model.cfg.text_len), model.cfg.text_dim, generator=g))
    st.prefill(*cond_inputs(hw, seed))
    return st


def cond_inputs(hw: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ref latent [1, 16, 1, h, w], motion latents [1, 16, 19, h, w] (CPU; the stepper moves them)."""
    g = torch.Generator().manual_seed(seed + 1)
    return (torch.randn(1, 16, 1, *hw, generator=g),
            torch.randn(1, 16, STREAM.motion_latent_frames, *hw, generator=g))


def block_inputs(cfg: ModelConfig, n: int, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Block n's noise [1, 16, 3, h, w] and audio features [1, layers, audio_dim, 12] (CPU)."""
    g = torch.Generator().manual_seed(1000 + n)
    noise = torch.randn(1, 16, STREAM.frames_per_block, *hw, generator=g)
    feats = torch.randn(1, cfg.audio_layers, cfg.audio_dim, 4 * STREAM.frames_per_block, generator=g)
    return noise, feats


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ---- section 4 ---------------------------------------------------------------------------------

def _compare_block(eager: BlockStepper, graph: BlockStepper, n: int, noise, feats) -> dict:
    """Denoise block n with both steppers: latent, every step's velocity and every ring."""
    ta, tb = [], []
    xa, xb = eager.denoise(noise, n, feats, trace=ta), graph.denoise(noise, n, feats, trace=tb)
    v_eq = [torch.equal(va, vb) for (va, _), (vb, _) in zip(ta, tb)]
    rings_eq = all(torch.equal(eager.rings[i].k, graph.rings[i].k) and torch.equal(eager.rings[i].v, graph.rings[i].v)
                   for i in eager.steps)
    rec = {"block": n, "path": "graph" if n >= FILL_BLOCK else "eager (ring filling)",
           "latent_equal": torch.equal(xa, xb), "latent_max_abs": _max_abs(xa, xb),
           "velocities_equal": all(v_eq) and len(v_eq) == len(eager.steps),
           "velocity_max_abs": max(_max_abs(va, vb) for (va, _), (vb, _) in zip(ta, tb)), "rings_equal": rings_eq}
    rec["equal"] = rec["latent_equal"] and rec["velocities_equal"] and rings_eq
    return rec, xa


def check_graphs(preset: str, layers: int, hw: tuple[int, int], device: torch.device, blocks: int,
                 dtype: torch.dtype = torch.bfloat16) -> dict:
    """Section 4. -> per-block equality records, capture/replay counts, passed."""
    if blocks < SINK_BLOCK + 2:
        raise ValueError(f"--graph-blocks {blocks}: need >= {SINK_BLOCK + 2} (ring fill, capture, sink re-prefill, replays)")
    cfg = layer_config(preset, layers)
    model = build_model(cfg, device, dtype)
    eager = new_stepper(model, hw, graphs=False, positions=REBASE_POLICY)
    graph = new_stepper(model, hw, graphs=True, positions=REBASE_POLICY)
    capture = device.type == "cuda"
    if graph.graphs is None or graph.graphs.capture != capture or eager.graphs is not None:
        raise RuntimeError(f"stepper graph switch: eager.graphs={eager.graphs}, graph.graphs={graph.graphs} on {device}")
    records, first = [], None
    for n in range(blocks):
        if n == SINK_BLOCK:  # Session's sink replacement: conditioning K/V rewritten at the same addresses
            motion = torch.zeros(1, 16, STREAM.motion_latent_frames, *hw, dtype=first.dtype)
            for st in (eager, graph):
                st.prefill(first, motion)
        rec, x = _compare_block(eager, graph, n, *block_inputs(cfg, n, hw))
        records.append(rec)
        if n == 0:
            first = x[:, :, :1].clone()
    sync(device)
    steps = len(graph.steps)
    g = graph.graphs
    counts = {"builds": g.builds, "expected_builds": steps, "static_runs": g.static_runs,
              "expected_static_runs": steps * (blocks - FILL_BLOCK)}
    if capture:
        counts["replays_per_step"] = {str(i): sg.replays for i, sg in g.graphs.items()}
        counts["expected_replays_per_step"] = blocks - FILL_BLOCK - 1
    counts_ok = (g.builds == steps and g.static_runs == counts["expected_static_runs"]
                 and (not capture or all(sg.replays == blocks - FILL_BLOCK - 1 for sg in g.graphs.values())))
    rebased = dict(graph._rebased)
    return {"mode": "CUDA graphs captured + replayed (StreamConfig(cuda_graphs=True)) vs cuda_graphs=False" if capture
            else "static formulation uncaptured (StepGraphs(capture=False), CPU) vs eager",
            "layers": layers, "latent_hw": list(hw), "dtype": str(dtype).replace("torch.", ""), "blocks": records,
            "counts": counts, "rebased_per_step": {str(k): v for k, v in rebased.items()},
            "passed": all(r["equal"] for r in records) and counts_ok}


# ---- section 6 ---------------------------------------------------------------------------------

def _timed(fn, device: torch.device) -> tuple[object, float]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def time_mode(model: CausalWanS2V, hw: tuple[int, int], graphs: bool, timed_blocks: int) -> dict:
    """Drive a fresh stepper as a TPP stage does (audio once per block, then `step` per owned
    step): blocks 0..FILL_BLOCK warm up (ring filling, JIT, capture), then `timed_blocks` blocks
    with the ring full are timed step by step. -> medians in seconds."""
    device = model.ops.device
    st = new_stepper(model, hw, graphs=graphs)
    _, prefill_s = _timed(lambda: st.prefill(*cond_inputs(hw, 0)), device)  # warm: what a sink re-prefill costs
    steps, audio_s = [], []
    for n in range(FILL_BLOCK + 1 + timed_blocks):
        noise, feats = block_inputs(model.cfg, n, hw)
        x = noise.to(device=device, dtype=model.ops.dtype)
        cond = torch.zeros_like(x)
        audio, dt = _timed(lambda: st.audio(feats), device)
        for i in st.steps:
            x, s = _timed(lambda: st.step(i, x, n, audio, cond), device)
            if n > FILL_BLOCK:
                steps.append(s)
        if n > FILL_BLOCK:
            audio_s.append(dt)
    res = {"step_s": statistics.median(steps), "step_s_min": min(steps), "step_s_samples": len(steps),
           "audio_s": statistics.median(audio_s), "prefill_s": prefill_s, "finite": bool(torch.isfinite(x).all())}
    if st.graphs is not None:
        res["graph_builds"], res["graph_static_runs"] = st.graphs.builds, st.graphs.static_runs
    if device.type == "cuda":
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del st
    return res


def measure_vae(device: torch.device, hw: tuple[int, int], dry_run: bool, reps: int = 3) -> dict:
    """Streaming decode of one block (3 latent frames -> 12 frames), random-weight Wan2.1 VAE at
    the published sizes (dry run: dim 8), bf16, after a first 1-frame decode (the stream start)."""
    cfg = VAEConfig(dim=8) if dry_run else VAEConfig()
    vae = WanVAE(cfg, dtype=torch.bfloat16, device=device, ops=OpTable(device, torch.bfloat16)).init_random_(0)
    dec = vae.new_stream()
    g = torch.Generator().manual_seed(7)
    dec(torch.randn(16, 1, *hw, generator=g).to(device))
    times = []
    for _ in range(reps + 1):  # the first block after the stream start warms the cache shapes
        lat = torch.randn(16, STREAM.frames_per_block, *hw, generator=g).to(device)
        times.append(_timed(lambda: dec(lat), device)[1])
    return {"source": "measured", "seconds": statistics.median(times[1:]), "config": f"VAEConfig(dim={cfg.dim})",
            "what": f"stream decode of {STREAM.frames_per_block} latent frames at {hw[0]}x{hw[1]}, random weights, bf16"}


def layout_model(ranks: int, vae_rank: bool, t_step: float, t_audio: float, t_vae: float, t_hop: float,
                 t_prefill: float, frames: int = 4 * STREAM.frames_per_block, steps: int = STREAM.sampling_steps) -> dict:
    """bench/TPP_MODEL.md: T_r = (4/R) t_step [+ t_audio on rank 0] + t_hop; T_vae = t_vae on its
    own rank, else added to the last DiT rank; I = max stage; FPS = 12 / I;
    TTFF = t_prefill + 4 t_step + t_audio + t_vae + (R + 1) t_hop (image encode not included).
    Layout "1" is one process: no hops, one stage = 4 t_step + t_audio + t_vae."""
    ring = ranks > 1 or vae_rank
    hop = t_hop if ring else 0.0
    stages = {f"dit{r}": steps / ranks * t_step + (t_audio if r == 0 else 0.0) + hop for r in range(ranks)}
    if vae_rank:
        stages["vae"] = t_vae
    else:
        stages[f"dit{ranks - 1}"] += t_vae
    interval = max(stages.values())
    return {"gpus": ranks + int(vae_rank), "stage_s": stages, "interval_s": interval, "fps": frames / interval,
            "ttff_s": t_prefill + steps * t_step + t_audio + t_vae + ((ranks + 1) * t_hop if ring else 0.0)}


def extrapolate(mode: dict, layers: int, full_cfg: ModelConfig, hw: tuple[int, int], vae_s: float, hop_s: float) -> dict:
    """Per-step time at N layers -> the full model (linear in layers: the per-step work outside
    the blocks - embeddings, head - is scaled too, a slight over-estimate) -> every layout."""
    scale = full_cfg.num_layers / layers
    t_step, t_prefill = mode["step_s"] * scale, mode["prefill_s"] * scale
    flops = step_flops(full_cfg, STREAM, hw, block=FILL_BLOCK + 1)["total"]
    return {"layers_measured": layers, "layers_full": full_cfg.num_layers, "t_step_full_s": t_step,
            "t_prefill_full_s": t_prefill, "t_audio_s": mode["audio_s"],
            "achieved_tflops": flops / t_step / 1e12, "step_tflop": flops / 1e12,
            "layouts": {name: layout_model(r, v, t_step, mode["audio_s"], vae_s, hop_s, t_prefill)
                        for name, (r, v) in LAYOUTS.items()}}


def time_dit(preset: str, layers: int, hw: tuple[int, int], device: torch.device, timed_blocks: int,
             vae: dict, hop_s: float, dry_run: bool) -> dict:
    """Section 6: bf16 then fp8 (converted in place), each eager and with graphs."""
    cfg = layer_config(preset, layers)
    model = build_model(cfg, device, torch.bfloat16)
    modes, errors = {}, {}
    for precision in ("bf16", "fp8"):
        if precision == "fp8":
            to_fp8(model)
        for graphs in (False, True):
            name = f"{precision}-{'graphs' if graphs else 'eager'}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                m = time_mode(model, hw, graphs, timed_blocks)
                m["providers"] = dict(model.ops.chosen)
                m.update(extrapolate(m, layers, PRESETS[preset], hw, vae["seconds"], hop_s))
                modes[name] = m
            except Exception as e:  # noqa: BLE001  (record, then time the other modes)
                errors[name] = f"{type(e).__name__}: {e}"
    best = min(modes, key=lambda k: modes[k]["t_step_full_s"]) if modes else None
    return {"driver": "engine BlockStepper.step (forward + Euler update), ring full, synchronised per step",
            "graphs_on_cpu": "static formulation uncaptured (StepGraphs(capture=False))" if device.type != "cuda" else None,
            "preset": preset, "layers": layers, "audio_inject_layers": list(cfg.audio_inject_layers),
            "latent_hw": list(hw), "timed_blocks": timed_blocks, "vae": vae, "t_hop_s": hop_s,
            "hop_source": "assumed (bench/TPP_MODEL.md)", "modes": modes, "errors": errors,
            "summary": {k: {"t_step_full_s": m["t_step_full_s"], "fps": {n: lay["fps"] for n, lay in m["layouts"].items()}}
                        for k, m in modes.items()},
            "fastest_mode": best, "timing_note": "CPU timings (dry run) are plumbing only" if dry_run else None,
            "passed": not errors and all(m["finite"] for m in modes.values()) and len(modes) == 4}
