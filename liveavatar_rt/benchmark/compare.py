"""`--compare`: the same session with reference ops everywhere, the speedup, and an output check.

Three runs of the same config, seed, image and audio in this process (then two short profiled
sessions, fast and reference, for the per-op shares of profile.py):
  fast      the best provider per op (what `bench` times)
  reference OpTable(force="ref"): every op is its plain-PyTorch reference (no fused providers)
  oracle    reference ops in fp32: the accuracy yardstick for the tolerance rule
The engine's exact shortcuts (text K/V once per session, audio tokens once per block, one
conditioning prefill shared by the step caches) are on in all three: each is tested equal to
the published per-forward computation, so turning them off would change time, not output.

Tolerance (DESIGN.md "Tests", `ops/tolerance.py`, the rule the op tests apply per op, here on the
whole stream's clean block latents): the fast run's max |error| against the fp32 oracle may be
at most 2x the reference run's own max |error| against it, plus an arithmetic-noise term of
NOISE_ATOL[dtype] x max(1, max |oracle|).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..ops.tolerance import provider_tolerance
from ..config import DTYPES
from .e2e import BenchConfig, bench, run_session

RULE = "fast error <= 2 x reference-ops error (both vs fp32 reference ops) + noise atol"
# the largest max-abs error against the oracle the fast run may have (see module doc)
allowed_max_abs = provider_tolerance


def _latents(raw: dict) -> torch.Tensor:
    lat = raw["outputs"]["latents"]
    if any(x is None for x in lat):
        raise RuntimeError("the session returned no block latents: cannot check the output")
    return torch.cat(lat, dim=2).double()  # [1, 16, blocks * F, h, w]


def match(fast: dict, ref: dict, oracle: dict, dtype: torch.dtype) -> dict:
    """Check the fast run against the rule; raw dicts from run_session(keep_outputs=True)."""
    lf, lr, lo = _latents(fast), _latents(ref), _latents(oracle)
    allowed = allowed_max_abs(lr, lo, dtype)
    err = (lf - lo).abs().max().item()
    vf, vr = fast["outputs"]["video"].astype(np.int16), ref["outputs"]["video"].astype(np.int16)
    dv = np.abs(vf - vr)
    return {"ok": bool(err <= allowed and torch.isfinite(lf).all()), "rule": RULE,
            "latent_max_abs": err, "latent_rel_l2": ((lf - lo).norm() / lo.norm()).item(),
            "ref_lowp_max_abs": (lr - lo).abs().max().item(), "allowed_max_abs": allowed,
            "video_max_abs": int(dv.max()), "video_mean_abs": float(dv.mean()), "blocks": len(fast["frames"])}


def _ratio(ref_stage: dict | None, fast_stage: dict | None) -> float | None:
    if ref_stage is None or fast_stage is None or fast_stage["median"] <= 0:
        return None
    return ref_stage["median"] / fast_stage["median"]


def run_compare(cfg: BenchConfig) -> dict:
    """-> the fast run's bench result with a "compare" entry (report.COMPARE_SCHEMA)."""
    if cfg.layout != "1":
        raise ValueError("--compare runs in one process (layout '1'); TPP ranks pick their own providers")
    if cfg.provider is not None:
        raise ValueError("--compare chooses the providers itself; do not pass --provider with it")
    fast_raw = run_session(cfg, keep_outputs=True)
    ref_cfg = dataclasses.replace(cfg, provider="ref")
    ref_raw = run_session(ref_cfg, keep_outputs=True)
    oracle_raw = (ref_raw if cfg.dtype == "fp32"
                  else run_session(dataclasses.replace(cfg, provider="ref", dtype="fp32", encode=False), keep_outputs=True))
    result = bench(cfg, fast_raw)
    ref_result = bench(ref_cfg, ref_raw, peak=result["flops"]["matmul_peak"])
    fs, rs = result["stages"], ref_result["stages"]
    result["compare"] = {
        "reference": {k: ref_result[k] for k in ("ttff", "fps", "stages", "flops")}
        | {"providers": ref_result["hardware"]["providers"]},
        "speedup": {"steady_e2e": result["fps"]["steady_e2e"] / ref_result["fps"]["steady_e2e"],
                    "denoise": _ratio(rs["denoise"], fs["denoise"]), "vae_decode": _ratio(rs["vae_decode"], fs["vae_decode"])},
        "match": match(fast_raw, ref_raw, oracle_raw, DTYPES[cfg.dtype]),
        "op_shares": {name: profiled(c) for name, c in (("fast", cfg), ("reference", ref_cfg))},
    }
    return result


def profiled(cfg: BenchConfig, blocks: int = 2) -> dict:
    """Per-op shares of `blocks` steady blocks, in a short session of its own (profile.py)."""
    short = dataclasses.replace(cfg, blocks=cfg.warmup + blocks, encode=False)
    return run_session(short, profile=True)["op_shares"]
