"""The benchmark's JSON schema (defined once: the CLI validates what it writes, the tests
validate a short run), JSON writing and the printed summary."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Nullable:
    """A field that may be null (e.g. GPU memory without a GPU, DiT stages under TPP)."""
    spec: object


NUM = (int, float)
STAGE = {"n": int, "min": NUM, "median": NUM, "p95": NUM, "mean": NUM, "total": NUM}
STAGE_NAMES = ("audio_features", "audio_encoder", "step0", "step1", "step2", "step3", "denoise",
               "vae_decode", "video_encode", "block_e2e")
SCHEMA = {
    "schema": str, "date": str, "config": dict,
    "hardware": {"cpu_model": str, "cpu_flags": list, "cpu_count": int, "cpus_usable": int, "torch_threads": int,
                 "load_average_1m": NUM, "gpus": list, "torch": str, "triton": str, "python": str,
                 "liveavatar_rt": str, "extension": str, "providers": dict},
    "model": {"name": str, "note": str, "params_dit": int, "video_hw": list, "latent_hw": list,
              "frames_per_block": int, "steps": int, "blocks": int, "frames": int, "video_seconds": NUM},
    "ttff": {"cold_s": NUM, "warm_s": NUM, "model_load_s": NUM, "session_setup_s": NUM},
    "fps": {"steady_e2e": NUM, "steady_denoise": Nullable(NUM), "realtime_factor": NUM, "steady_blocks": int},
    "stages": {name: Nullable(STAGE) for name in STAGE_NAMES},
    "memory": {"peak_rss_mib": NUM, "rss_end_mib": NUM, "gpu_peak_mib": Nullable(NUM)},
    "flops": {"dit_flops_steady": int, "dit_seconds_steady": Nullable(NUM), "dit_flop_per_s": Nullable(NUM),
              "matmul_peak": {"flops_per_s": NUM, "n": int, "dtype": str, "repeats": int, "best_seconds": NUM,
                              "median_seconds": NUM},
              "fraction_of_peak": Nullable(NUM)},
}
# present only with --compare
COMPARE_SCHEMA = {
    "reference": dict,  # the reference-ops run, reduced like the main result (fps, stages, ttff)
    "speedup": {"steady_e2e": NUM, "denoise": Nullable(NUM), "vae_decode": Nullable(NUM)},
    "match": {"ok": bool, "rule": str, "latent_max_abs": NUM, "latent_rel_l2": NUM, "ref_lowp_max_abs": NUM,
              "allowed_max_abs": NUM, "video_max_abs": int, "video_mean_abs": NUM, "blocks": int},
    # profile.op_shares of the fast and the reference-ops run
    "op_shares": {run: {"blocks": int, "self_ms_per_block": NUM, "ops": list} for run in ("fast", "reference")},
}


def validate(obj, schema=SCHEMA, path: str = "result") -> list[str]:
    """-> problems ("result.fps.steady_e2e: missing", ...); [] when `obj` matches `schema`.
    Extra keys are allowed; NaN/inf numbers are problems (JSON cannot hold them)."""
    if isinstance(schema, Nullable):
        return [] if obj is None else validate(obj, schema.spec, path)
    if isinstance(schema, dict):
        if not isinstance(obj, dict):
            return [f"{path}: expected an object, got {type(obj).__name__}"]
        out = []
        for key, spec in schema.items():
            if key not in obj:
                out.append(f"{path}.{key}: missing")
            else:
                out += validate(obj[key], spec, f"{path}.{key}")
        return out
    types = schema if isinstance(schema, tuple) else (schema,)
    if obj is None or isinstance(obj, bool) and bool not in types or not isinstance(obj, types):
        return [f"{path}: expected {'/'.join(t.__name__ for t in types)}, got {type(obj).__name__}"]
    if isinstance(obj, float) and not math.isfinite(obj):
        return [f"{path}: not finite ({obj})"]
    return []


def json_safe(x):
    """NaN/inf -> None, tuples -> lists, recursively (JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def write_json(path: str | Path, result: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(json_safe(result), indent=2) + "\n")


def _ms(stage: dict | None) -> str:
    if stage is None:
        return "   n/a (not observable here)"
    return f"{stage['min'] * 1e3:8.1f} {stage['median'] * 1e3:8.1f} {stage['p95'] * 1e3:8.1f}"


def format_text(r: dict) -> str:
    """The human-readable summary printed by `liveavatar-rt bench`."""
    hw, m, f, fl = r["hardware"], r["model"], r["fps"], r["flops"]
    gpus = ", ".join(g["name"] for g in hw["gpus"]) or "none"
    lines = [
        f"machine   {hw['cpu_model']} ({', '.join(hw['cpu_flags'])}); {hw['cpus_usable']}/{hw['cpu_count']} cpus usable, "
        f"{hw['torch_threads']} torch threads, load {hw['load_average_1m']:.2f}; gpu {gpus}",
        f"software  torch {hw['torch']}, triton {hw['triton']}, liveavatar_rt {hw['liveavatar_rt']}, extension {hw['extension']}",
        f"providers {', '.join(f'{k}={v}' for k, v in sorted(hw['providers'].items()))}",
        f"model     {m['name']} ({m['params_dit'] / 1e6:.1f} M DiT params), {m['video_hw'][0]}x{m['video_hw'][1]}, "
        f"{m['blocks']} blocks / {m['frames']} frames ({m['video_seconds']:.1f} s), layout {r['config']['layout']}, "
        f"{r['config']['dtype']}",
    ]
    if m["note"]:
        lines.append(f"note      {m['note']}")
    t = r["ttff"]
    lines += [
        f"TTFF      cold {t['cold_s']:.2f} s (model load {t['model_load_s']:.2f} s + warm), "
        f"warm {t['warm_s']:.2f} s (session setup {t['session_setup_s']:.2f} s + first block)",
        f"FPS       steady end-to-end {f['steady_e2e']:.1f} ({f['realtime_factor']:.2f}x real time), "
        + (f"denoise-only {f['steady_denoise']:.1f}" if f["steady_denoise"] else "denoise-only n/a")
        + f"  (over {f['steady_blocks']} blocks after warm-up)",
        "stage (ms per block)      min   median      p95",
    ]
    lines += [f"  {name:16s} {_ms(r['stages'][name])}" for name in STAGE_NAMES]
    mem = r["memory"]
    lines.append(f"memory    peak RSS {mem['peak_rss_mib']:.0f} MiB, RSS at end {mem['rss_end_mib']:.0f} MiB"
                 + (f", GPU peak {mem['gpu_peak_mib']:.0f} MiB" if mem["gpu_peak_mib"] is not None else ""))
    pk = fl["matmul_peak"]
    lines.append(f"matmul    peak {pk['flops_per_s'] / 1e9:.1f} GFLOP/s ({pk['dtype']} {pk['n']}^3, best of {pk['repeats']})")
    if fl["dit_flop_per_s"]:
        lines.append(f"DiT       {fl['dit_flop_per_s'] / 1e9:.1f} GFLOP/s = {100 * fl['fraction_of_peak']:.1f} % of the "
                     f"matmul peak ({fl['dit_flops_steady'] / 1e9:.2f} GFLOP in {fl['dit_seconds_steady']:.3f} s)")
    c = r.get("compare")
    if c:
        s, mt = c["speedup"], c["match"]
        lines.append(f"compare   vs reference ops: end-to-end {s['steady_e2e']:.2f}x"
                     + (f", denoise {s['denoise']:.2f}x" if s["denoise"] else "")
                     + (f", VAE decode {s['vae_decode']:.2f}x" if s["vae_decode"] else ""))
        lines.append(f"match     {'OK' if mt['ok'] else 'FAILED'}: latent max |diff| vs fp32 reference "
                     f"{mt['latent_max_abs']:.3g} <= {mt['allowed_max_abs']:.3g} allowed ({mt['rule']}); "
                     f"video max |diff| vs reference-ops video {mt['video_max_abs']} (mean {mt['video_mean_abs']:.3f})")
        for run, sh in c["op_shares"].items():
            lines.append(f"ops       {run}: self time {sh['self_ms_per_block']:.0f} ms per block (profiled, "
                         f"{sh['blocks']} blocks): " + ", ".join(f"{o['op'].replace('liveavatar_rt::', 'lrt::')} "
                                                                 f"{100 * o['share']:.0f} %" for o in sh["ops"][:8]))
    return "\n".join(lines)
