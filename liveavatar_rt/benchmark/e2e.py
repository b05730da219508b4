"""One timed streaming session: model load -> session -> N blocks -> MP4 (a discarded temp file).

What is timed, per block n (all wall clock, perf_counter, this process):
- audio_features: pushing the block's audio (real-time-sized chunks of one block, 480 ms)
  until the block is ready; the streaming front end computes its features at push time.
- audio_encoder, step0..stepK, vae_decode: the engine's own instrumentation (Block.timings).
- denoise: audio_encoder + all steps (what the DiT costs per block).
- video_encode: H.264 + AAC of the block's frames and audio (PyAV, like the CLI) into a
  temporary file that is discarded.
- block_e2e: all of the above, from the first push to the end of the encode.

Time to first frame: warm = from the session() call (VAE-encode of the reference and motion
frames, conditioning prefill) to the first block's frames in hand; cold = the same plus the
model load (Pipeline.from_pretrained) measured in this run. Steady state excludes the first
`warmup` blocks (first-touch allocations, ring not yet full, kernel selection).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import AUDIO_RATE, DTYPES
from ..engine.pipelined import check_schedule
from .flops import block_flops
from .profile import op_shares, start_profiler
from .memory import gpu_peak_mib, peak_rss_mib, reset_gpu_peak, rss_mib
from .stats import summary

EXAMPLE = Path(__file__).resolve().parents[2] / "assets" / "example"


@dataclass(frozen=True)
class BenchConfig:
    model: str = "tiny"  # preset name or a published-layout directory
    blocks: int = 30  # 30 blocks of 12 frames = 14.3 s of video
    warmup: int = 3
    image: str = str(EXAMPLE / "portrait.png")
    audio: str = str(EXAMPLE / "speech.wav")  # looped to the length the blocks need
    seed: int = 0
    dtype: str = "bf16"
    precision: str = "bf16"  # "fp8": the published --fp8 linears
    decoder: str | None = None  # a TAEHV-layout decoder file instead of the VAE's decoder
    kv_cache_dtype: str | None = None  # "fp8": E4M3 K/V caches (cache/kv.py)
    compile: bool = False  # torch.compile the DiT blocks (model/compile.py)
    # "pipelined": TPP in one process (engine/pipelined.py); the audio is then pushed as many
    # blocks ahead as there are steps, so the batch can fill
    schedule: str = "sequential"
    device: str = "cpu"
    provider: str | None = None  # None: the best provider per op; "ref": reference ops everywhere
    layout: str = "1"  # "1": one process; a TPP layout ("4+1", "2+1", "2", ...) spawns local ranks
    encode: bool = True
    peak_n: int = 2048
    # torch CPU threads for the whole run (matmul peak included); 0 keeps torch's default. One by
    # default: on a shared machine a team of OpenMP threads spinning on oversubscribed cores
    # turns other processes' load into 10x outliers, one thread degrades gracefully.
    threads: int = 1

    def __post_init__(self) -> None:
        if self.blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {self.blocks}")
        if not 0 <= self.warmup < self.blocks:
            raise ValueError(f"warmup must be in [0, blocks), got warmup={self.warmup}, blocks={self.blocks}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: torch's default), got {self.threads}")
        check_schedule(self.schedule)


def looped_audio(path: str, seconds: float, rate: int = AUDIO_RATE) -> np.ndarray:
    """The file's audio at `rate`, repeated until it lasts `seconds` -> float32 [n]."""
    from ..audio.pcm import as_mono_float32
    from ..audio.resample import resample
    from ..io.audio_file import read_audio

    pcm, r = read_audio(path)
    pcm = as_mono_float32(pcm, r)
    if r != rate:
        pcm = resample(pcm, r, rate)
    n = int(np.ceil(seconds * rate))
    return np.tile(pcm, -(-n // len(pcm)))[:n].astype(np.float32)


def _open(cfg: BenchConfig):
    """The Pipeline of `cfg` (its layout included)."""
    from ..engine import Pipeline

    return Pipeline.from_pretrained(cfg.model, device=cfg.device, dtype=DTYPES[cfg.dtype], seed=cfg.seed,
                                    force_provider=cfg.provider, quiet=True, layout=cfg.layout,
                                    precision=cfg.precision, decoder=cfg.decoder,
                                    kv_cache_dtype=cfg.kv_cache_dtype, compile=cfg.compile, schedule=cfg.schedule)


def run_session(cfg: BenchConfig, keep_outputs: bool = False, profile: bool = False) -> dict:
    """Load, stream `cfg.blocks` blocks, and return the raw measurements:
    {"load_s", "setup_s", "warm_ttff_s", "per_block": [timings dict per block], "frames": [n per block],
     "hw": (H, W), "latent_hw", "note", "providers", "outputs": {"latents", "video"} if keep_outputs,
     "op_shares" if profile: torch.profiler over the blocks after `cfg.warmup` (profile.op_shares)}."""
    reset_gpu_peak()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    pipe = _open(cfg)
    load_s = time.perf_counter() - t0
    spb = 4 * pipe.stream.frames_per_block * AUDIO_RATE // pipe.stream.fps  # samples per block (7680)
    # pipelined: audio for the blocks the batch holds besides block n, and as much past the last
    # timed block, so every timed block runs in full batches (a long stream's steady state)
    ahead = pipe.stream.sampling_steps - 1 if pipe.schedule == "pipelined" else 0
    pcm = looped_audio(cfg.audio, (cfg.blocks + ahead) * spb / AUDIO_RATE + 0.1)
    per_block, n_frames, latents, videos = [], [], [], []
    try:
        t_sess = time.perf_counter()
        sess = pipe.session(cfg.image, seed=cfg.seed)
        setup_s = time.perf_counter() - t_sess
        h, w = sess.height, sess.width
        latent_hw = tuple(sess.ref_latent.shape[-2:])
        warm_ttff = None
        with tempfile.TemporaryDirectory() as tmp, sess:
            writer = None
            if cfg.encode:
                from ..io.video import Mp4Writer

                writer = Mp4Writer(Path(tmp) / "bench.mp4", w, h, fps=pipe.stream.fps, sample_rate=AUDIO_RATE)
            blocks, pushed = sess.frames(), 0
            prof = None
            for n in range(cfg.blocks):
                if profile and n == cfg.warmup:
                    prof = start_profiler()
                tb = time.perf_counter()
                while sess.audio.blocks_ready() <= n + ahead and pushed < len(pcm):
                    sess.push_audio(pcm[pushed:pushed + spb], AUDIO_RATE)
                    pushed += spb
                if n == cfg.blocks - 1:
                    sess.end_audio()  # the last block: the stream ends here
                t_audio = time.perf_counter() - tb
                block = next(blocks)
                if warm_ttff is None:
                    warm_ttff = time.perf_counter() - t_sess
                timings = {"audio_features": t_audio, **block.timings}
                if writer is not None:
                    t = time.perf_counter()
                    writer.write(block.video, block.audio)
                    timings["video_encode"] = time.perf_counter() - t
                timings["block_e2e"] = time.perf_counter() - tb
                per_block.append(timings)
                n_frames.append(len(block.video))
                if keep_outputs:
                    latents.append(None if block.latent is None else block.latent.float().clone())
                    videos.append(block.video.copy())
            if writer is not None:
                writer.close()
            if prof is not None:
                prof.stop()
    finally:
        pipe.close()
    out = {"load_s": load_s, "setup_s": setup_s, "warm_ttff_s": warm_ttff, "per_block": per_block,
           "frames": n_frames, "hw": (h, w), "latent_hw": latent_hw, "note": pipe.note,
           "providers": dict(pipe.model.ops.chosen), "cfg_model": pipe.model.cfg, "stream": pipe.stream,
           "params_dit": sum(p.numel() for p in pipe.model.parameters()),
           # memory right after this session (the process peak includes the model load)
           "memory": {"peak_rss_mib": peak_rss_mib(), "rss_end_mib": rss_mib(), "gpu_peak_mib": gpu_peak_mib()}}
    if keep_outputs:
        out["outputs"] = {"latents": latents, "video": np.concatenate(videos)}
    if prof is not None:
        out["op_shares"] = op_shares(prof, cfg.blocks - cfg.warmup)
    return out


def _stage(per_block: list[dict], key: str) -> dict | None:
    vals = [t[key] for t in per_block if key in t]
    return summary(vals) if len(vals) == len(per_block) and vals else None


def bench(cfg: BenchConfig, raw: dict | None = None, peak: dict | None = None) -> dict:
    """Run (or take `raw` from run_session) and reduce to the benchmark result (report.SCHEMA)."""
    from .hardware import fingerprint
    from .peak import matmul_peak

    raw = raw if raw is not None else run_session(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    peak = peak if peak is not None else matmul_peak(cfg.peak_n, DTYPES["bf16"] if cfg.dtype == "bf16"
                                                     else torch.float32, cfg.device)
    per, frames, stream, mcfg = raw["per_block"], raw["frames"], raw["stream"], raw["cfg_model"]
    steady = per[cfg.warmup:]
    steady_frames = sum(frames[cfg.warmup:])
    step_keys = [f"step{i}" for i in range(stream.sampling_steps)]
    for t in per:  # "dit": the pipelined schedule's forwards charged to this block (no per-step times)
        if "dit" not in t and all(k in t for k in step_keys):
            t["dit"] = sum(t[k] for k in step_keys)
        if "dit" in t and "audio_encoder" in t:
            t["denoise"] = t["audio_encoder"] + t["dit"]
    stages = {k: _stage(steady, k) for k in ["audio_features", "audio_encoder", *step_keys, "denoise",
                                              "vae_decode", "video_encode", "block_e2e"]}
    # the DiT's seconds per block (the steps, or the pipelined forwards charged to it) and the
    # pipelined schedule's mean batch height: present when measured
    stages.update({k: v for k in ("dit", "rows") if (v := _stage(steady, k)) is not None})
    e2e_s = sum(t["block_e2e"] for t in steady)
    dit_s = stages["dit"]["total"] if "dit" in stages else None
    flops = sum(block_flops(mcfg, stream, raw["latent_hw"], cfg.warmup + i) for i in range(len(steady)))
    achieved = flops / dit_s if dit_s else None
    return {
        "schema": "liveavatar_rt.bench/1",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": asdict(cfg),
        "hardware": {**fingerprint(), "providers": raw["providers"]},
        "model": {"name": cfg.model, "note": raw["note"], "params_dit": raw["params_dit"],
                  "video_hw": list(raw["hw"]), "latent_hw": list(raw["latent_hw"]),
                  "frames_per_block": 4 * stream.frames_per_block, "steps": stream.sampling_steps,
                  "blocks": len(per), "frames": sum(frames), "video_seconds": sum(frames) / stream.fps},
        "ttff": {"cold_s": raw["load_s"] + raw["warm_ttff_s"], "warm_s": raw["warm_ttff_s"],
                 "model_load_s": raw["load_s"], "session_setup_s": raw["setup_s"]},
        "fps": {"steady_e2e": steady_frames / e2e_s,
                "steady_denoise": steady_frames / sum(t["denoise"] for t in steady) if stages["denoise"] else None,
                "realtime_factor": steady_frames / e2e_s / stream.fps, "steady_blocks": len(steady)},
        "stages": stages,
        "memory": raw["memory"],
        "flops": {"dit_flops_steady": flops, "dit_seconds_steady": dit_s, "dit_flop_per_s": achieved,
                  "matmul_peak": peak, "fraction_of_peak": achieved / peak["flops_per_s"] if achieved else None},
    }
