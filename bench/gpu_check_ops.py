"""Section 3 of bench/gpu_check.py: kernels against their references.

`check_ops`: every Triton kernel and CUDA provider registered in `liveavatar_rt.ops.OPS`, in
fp32 and bf16, on one streaming block's per-layer shapes, under the shared provider rule
(liveavatar_rt/ops/tolerance.py): max |provider - fp32 reference| <= 2x the error of the
reference run in the low-precision dtype + an arithmetic-noise atol. The C++ CPU providers of
the same ops run too wherever they support the device (the dry run's CPU), so the dry run
drives the same plumbing. A Triton or CUDA provider that refuses a GPU, or that has no
case here, is a failure: a new kernel must not pass the acceptance check unchecked.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from typing import Callable

import torch

from liveavatar_rt.config import ModelConfig, StreamConfig
from liveavatar_rt.model.rope import motion_positions, noisy_positions, ref_positions, rope_cos_sin
from liveavatar_rt.ops import OPS
from liveavatar_rt.ops.tolerance import provider_tolerance

GPU_PROVIDER_MODULES = ("liveavatar_rt.ops.triton_providers", "liveavatar_rt.ops.cuda_providers")
DTYPES = (torch.float32, torch.bfloat16)
RULE = ("max|provider - fp32 ref| <= 2 * max|ref(dtype) - fp32 ref| + NOISE_ATOL[dtype] * max(1, max|fp32 ref|) "
        "(liveavatar_rt/ops/tolerance.py)")


# ---- geometry ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Geometry:
    """Per-layer shapes of one streaming block. 14B at 384x704: latent 48x88 -> S = 24*44 = 1056
    tokens per frame, Lq = 3 S = 3168 queries, ring cap = 12 S = 12672, Lc = S + packed motion = 2640."""

    cfg: ModelConfig
    latent_hw: tuple[int, int]
    frames: int  # latent frames per block
    tokens_per_frame: int  # S
    lq: int  # query tokens per block
    cap: int  # ring tokens (cache_frames * S)
    lc: int  # conditioning tokens (reference frame + frame packer)


def geometry(cfg: ModelConfig, latent_hw: tuple[int, int], stream: StreamConfig = StreamConfig()) -> Geometry:
    ph, pw = latent_hw[0] // 2, latent_hw[1] // 2
    s = ph * pw
    lc = len(ref_positions(cfg.ref_time_index, ph, pw)) + len(motion_positions(ph, pw, cfg.zip_frame_buckets))
    return Geometry(cfg, tuple(latent_hw), stream.frames_per_block, s, stream.frames_per_block * s,
                    stream.cache_frames * s, lc)


def _rope_tables(geo: Geometry, cond: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own fp32-exact RoPE tables -> (cos, sin) fp32 [L, D/2]: the block's query
    positions (block 7, mid-stream) or the conditioning positions at a sink offset."""
    ph, pw = geo.latent_hw[0] // 2, geo.latent_hw[1] // 2
    f0 = 7 * geo.frames
    if cond:
        pos = torch.cat([ref_positions(f0 + geo.cfg.ref_time_index, ph, pw),
                         motion_positions(ph, pw, geo.cfg.zip_frame_buckets)])
    else:
        pos = noisy_positions(f0, geo.frames, ph, pw)
    cos, sin = rope_cos_sin(pos, geo.cfg)
    return cos.float().to(device), sin.float().to(device)


# ---- cases ---------------------------------------------------------------------------------

@dataclass
class Case:
    """One op call. `base`: fp32 tensors on the device; `low`: the names given to the op in the
    working dtype (the rest stay as they are, e.g. fp32 RoPE tables); `call(t, dtype)` ->
    (args, kwargs) from those tensors, `dtype` being the working dtype of that call."""

    op: str
    name: str
    base: dict[str, torch.Tensor]
    low: tuple[str, ...]
    call: Callable


def gen(device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def randn(g: torch.Generator, *shape, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g, device=g.device) * scale


def modulate_cases(geo: Geometry, device) -> list[Case]:
    """model/block.py's form: x_norm [B, F, S, C] in the working dtype, shift/scale [B, F, 1, C] fp32."""
    g, C = gen(device, 1), geo.cfg.dim
    B, F, S = 1, geo.frames, geo.tokens_per_frame
    base = dict(x=randn(g, B, F, S, C, scale=3.0), shift=randn(g, B, F, 1, C), scale=randn(g, B, F, 1, C, scale=0.5))
    return [Case("modulate", "block [B,F,S,C]", base, ("x",),
                 lambda t, dt: ((t["x"], t["shift"], t["scale"], dt), {}))]


def block_norms_cases(geo: Geometry, device) -> dict[str, list[Case]]:
    """ops/block_norms.py as model/block.py calls them: x, y [1, L, C] (y in the working dtype),
    per-frame fp32 shift/scale/gate [1, F, 1, C]; norm1 (ln_modulate), norm3 (gated residual,
    affine, rounded input), norm2 (fp32 residual + y, modulation)."""
    g, C, eps = gen(device, 4), geo.cfg.dim, geo.cfg.eps
    B, F, L = 1, geo.frames, geo.lq
    base = dict(x=randn(g, B, L, C, scale=3.0), xf=randn(g, B, L, C, scale=3.0), y=randn(g, B, L, C),
                shift=randn(g, B, F, 1, C), scale=randn(g, B, F, 1, C, scale=0.5), gate=randn(g, B, F, 1, C, scale=0.5),
                w=randn(g, C, scale=0.5), b=randn(g, C, scale=0.5))
    return {
        "ln_modulate": [Case("ln_modulate", "norm1 x [1,L,C]", base, ("x",),
                             lambda t, dt: ((t["x"], t["shift"], t["scale"], eps, dt), {}))],
        "residual_norm": [
            Case("residual_norm", "norm3 (gate, affine, rounded)", base, ("x", "y", "w", "b"),
                 lambda t, dt: ((t["x"], t["y"], t["gate"], t["w"], t["b"], None, None, eps, True, dt), {})),
            Case("residual_norm", "norm2 (fp32 x + y, modulated)", base, ("y",),
                 lambda t, dt: ((t["xf"], t["y"], None, None, None, t["shift"], t["scale"], eps, False, dt), {}))],
    }


def rolling_attention_cases(geo: Geometry, device) -> list[Case]:
    """q [1, Lq, H, D]; ring K/V [1, cap, H, D] full (valid = cap) and filling (2 blocks);
    cond K/V [1, Lc, H, D] with the conditioning RoPE tables. x2 scales: a peakier softmax."""
    g, H, D = gen(device, 2), geo.cfg.num_heads, geo.cfg.head_dim
    cos, sin = _rope_tables(geo, cond=True, device=device)
    base = dict(q=randn(g, 1, geo.lq, H, D, scale=2.0), rk=randn(g, 1, geo.cap, H, D, scale=2.0),
                rv=randn(g, 1, geo.cap, H, D), ck=randn(g, 1, geo.lc, H, D, scale=2.0),
                cv=randn(g, 1, geo.lc, H, D), cos=cos, sin=sin)
    low = ("q", "rk", "rv", "ck", "cv")

    def call(valid):
        return lambda t, dt: ((t["q"], t["rk"], t["rv"], valid, t["ck"], t["cv"], t["cos"], t["sin"]), {})

    return [Case("rolling_attention", f"ring full (valid={geo.cap})", base, low, call(geo.cap)),
            Case("rolling_attention", f"ring filling (valid={2 * geo.lq})", base, low, call(min(2 * geo.lq, geo.cap)))]


def rolling_attention_fp8_cases(geo: Geometry, device) -> list[Case]:
    """The same call with K/V stored as the fp8 cache stores them (ops/kv_fp8.py: E4M3 codes +
    per-token, per-head fp32 scales); only q follows the working dtype."""
    from liveavatar_rt.ops.kv_fp8 import quantize_kv

    g, H, D = gen(device, 3), geo.cfg.num_heads, geo.cfg.head_dim
    cos, sin = _rope_tables(geo, cond=True, device=device)
    base = dict(q=randn(g, 1, geo.lq, H, D, scale=2.0), cos=cos, sin=sin)
    for name, n, scale in (("rk", geo.cap, 2.0), ("rv", geo.cap, 1.0), ("ck", geo.lc, 2.0), ("cv", geo.lc, 1.0)):
        base[name], base[name + "s"] = quantize_kv(randn(g, 1, n, H, D, scale=scale))

    def call(valid):
        return lambda t, dt: ((t["q"], t["rk"], t["rv"], t["rks"], t["rvs"], valid, t["ck"], t["cv"], t["cks"],
                               t["cvs"], t["cos"], t["sin"]), {})

    return [Case("rolling_attention_fp8", f"ring full (valid={geo.cap})", base, ("q",), call(geo.cap)),
            Case("rolling_attention_fp8", f"ring filling (valid={2 * geo.lq})", base, ("q",),
                 call(min(2 * geo.lq, geo.cap)))]


def qk_norm_rope_cases(geo: Geometry, device) -> list[Case]:
    """q, k [1, Lq, C]; wq, wk [C] fp32; the block's RoPE tables; plus the form the ring cache
    uses: k_rot written into a slot view of a [1, cap, H, D] ring (`k_rot_out`)."""
    g, C, H, D = gen(device, 3), geo.cfg.dim, geo.cfg.num_heads, geo.cfg.head_dim
    cos, sin = _rope_tables(geo, cond=False, device=device)
    base = dict(q=randn(g, 1, geo.lq, C, scale=3.0), k=randn(g, 1, geo.lq, C, scale=3.0),
                wq=randn(g, C), wk=randn(g, C), cos=cos, sin=sin)
    eps = geo.cfg.eps
    slot = geo.cap - geo.lq  # the last slot of the ring

    def plain(t, dt):
        return (t["q"], t["k"], t["wq"], t["wk"], eps, t["cos"], t["sin"], H), {}

    def ring_slot(t, dt):
        ring = torch.zeros(1, geo.cap, H, D, dtype=t["q"].dtype, device=t["q"].device)
        return plain(t, dt)[0], {"k_rot_out": ring[:, slot:slot + geo.lq]}

    return [Case("qk_norm_rope", "q,k [1,Lq,C]", base, ("q", "k"), plain),
            Case("qk_norm_rope", "k_rot into a ring slot", base, ("q", "k"), ring_slot)]


CASES: dict[str, Callable[[Geometry, torch.device], list[Case]]] = {
    "modulate": modulate_cases,
    "ln_modulate": lambda geo, device: block_norms_cases(geo, device)["ln_modulate"],
    "residual_norm": lambda geo, device: block_norms_cases(geo, device)["residual_norm"],
    "rolling_attention": rolling_attention_cases,
    "rolling_attention_fp8": rolling_attention_fp8_cases,
    "qk_norm_rope": qk_norm_rope_cases,
}


# ---- running one (case, provider, dtype) ------------------------------------------------------

def is_gpu_provider(provider) -> bool:
    """A Triton kernel or a CUDA provider (by name, or by the module its function lives in)."""
    fn = getattr(provider.fn, "__wrapped__", provider.fn)
    return provider.name in ("triton", "cuda") or getattr(fn, "__module__", "") in GPU_PROVIDER_MODULES


def triton_interpreting() -> bool:
    """True when Triton kernels run on CPU through the interpreter (the dry run sets it)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _inputs(case: Case, dtype: torch.dtype) -> tuple[dict, dict]:
    """(tensors in the working dtype, the same rounded values in fp32) for one call."""
    low = {k: (v.to(dtype) if k in case.low else v) for k, v in case.base.items()}
    fp32 = {k: (v.float() if k in case.low else v) for k, v in low.items()}
    return low, fp32


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def compare(out: torch.Tensor, ref_low: torch.Tensor, ref32: torch.Tensor, dtype: torch.dtype) -> dict:
    """Errors of one output against the fp32 reference and the provider rule's bound."""
    if out.shape != ref_low.shape or out.dtype != ref_low.dtype:
        return {"pass": False, "error": f"shape/dtype {tuple(out.shape)} {out.dtype} != reference "
                                        f"{tuple(ref_low.shape)} {ref_low.dtype}"}
    diff = out.double() - ref32.double()
    max_abs = diff.abs().max().item() if diff.numel() else 0.0
    ref_norm, ref_max = ref32.double().norm().item(), ref32.double().abs().max().item()
    tol = provider_tolerance(ref_low, ref32, dtype)
    finite = bool(torch.isfinite(out).all())
    return {"max_abs": max_abs, "rel_l2": diff.norm().item() / (ref_norm or 1.0),
            "max_rel": max_abs / (ref_max or 1.0), "tol": tol, "finite": finite,
            "bit_exact": bool(torch.equal(out, ref_low)), "pass": finite and max_abs <= tol}


def time_ms(fn: Callable, device: torch.device, reps: int = 5) -> float:
    """Median wall time of fn() in ms, synchronised (GPU only: CPU timing is not reported)."""
    fn()
    torch.cuda.synchronize(device)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _call(fn: Callable, case: Case, tensors: dict, dtype: torch.dtype) -> tuple[tuple, dict]:
    """fn on fresh (args, kwargs) of the case: out-variant views are new per call, so the
    provider and the references never write into each other's buffers. -> (outputs, kwargs)."""
    args, kwargs = case.call(tensors, dtype)
    return _as_tuple(fn(*args, **kwargs)), kwargs


@torch.no_grad()
def run_case(case: Case, provider_fn: Callable, reference: Callable, dtype: torch.dtype,
             device: torch.device, timed: bool) -> dict:
    """One provider call vs the reference in `dtype` and in fp32 (on the same rounded inputs)."""
    low, fp32 = _inputs(case, dtype)
    outs, kwargs = _call(provider_fn, case, low, dtype)
    ref_low, _ = _call(reference, case, low, dtype)
    ref32, _ = _call(reference, case, fp32, torch.float32)
    res = {"outputs": [compare(o, rl, r, dtype) for o, rl, r in zip(outs, ref_low, ref32)]}
    if len(outs) != len(ref_low):
        res["outputs"].append({"pass": False, "error": f"{len(outs)} outputs, reference has {len(ref_low)}"})
    for key, view in kwargs.items():  # out-variants must write into the view they were given
        written = any(o.data_ptr() == view.data_ptr() for o in outs) if isinstance(view, torch.Tensor) else True
        if key.endswith("_out") and not written:
            res["outputs"].append({"pass": False, "error": f"{key}: no output is the given view"})
    measured = [o for o in res["outputs"] if "max_abs" in o]
    res["max_abs"] = max((o["max_abs"] for o in measured), default=None)
    res["rel_l2"] = max((o["rel_l2"] for o in measured), default=None)
    res["pass"] = all(o["pass"] for o in res["outputs"])
    del outs, ref_low, ref32
    if timed:  # per call as the model makes it; a ring-slot case's fresh ring is in both timings
        res["provider_ms"] = time_ms(lambda: _call(provider_fn, case, low, dtype), device)
        res["reference_ms"] = time_ms(lambda: _call(reference, case, low, dtype), device)
        res["speedup"] = res["reference_ms"] / res["provider_ms"]
    return res


def _plan(provider, device: torch.device, dtype: torch.dtype, dry_run: bool) -> tuple[str, str | None, bool]:
    """-> (action 'run' | 'skip' | 'fail', reason, interpreted) for one provider and dtype."""
    why = provider.supports(device, dtype)
    if why is None:
        return "run", None, False
    gpu = is_gpu_provider(provider)
    if dry_run and provider.name == "triton" and device.type == "cpu" and triton_interpreting():
        return "run", f"interpreted on CPU (TRITON_INTERPRET=1); refused in production: {why}", True
    if gpu and not dry_run:
        return "fail", f"refused on {device}: {why}", False
    return "skip", why, False


def _entry(op_name, provider_name, case_name, dtype, status, **kw) -> dict:
    return {"op": op_name, "provider": provider_name, "case": case_name, "dtype": str(dtype).replace("torch.", ""),
            "status": status, **kw}


def check_ops(device: torch.device, geo: Geometry, dry_run: bool) -> dict:
    """Section 3: every GPU provider (and the CPU providers of the same ops where they support
    `device`) on `geo`'s shapes, fp32 and bf16. -> {"entries": [...], "passed": bool, ...}."""
    entries, other = [], []
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # fp32 references in fp32, never TF32
    try:
        _check_all(device, geo, dry_run, entries, other)
    finally:
        torch.set_float32_matmul_precision(precision)
    ran = [e for e in entries if e["status"] in ("pass", "fail") and "error" not in e and "outputs" in e]
    shapes = {"dim": geo.cfg.dim, "heads": geo.cfg.num_heads, "head_dim": geo.cfg.head_dim, "lq": geo.lq,
              "ring_cap": geo.cap, "cond_tokens": geo.lc, "latent_hw": list(geo.latent_hw)}
    return {"by_provider": summarize(entries), "shapes": shapes,
            "tolerance": RULE,
            "entries": entries, "ran": len(ran), "failed": sum(e["status"] == "fail" for e in entries),
            "other_providers_on_device_not_checked": other,
            "passed": bool(ran) and all(e["status"] != "fail" for e in entries)}


def _check_all(device: torch.device, geo: Geometry, dry_run: bool, entries: list, other: list) -> None:
    """Append one entry per (op, provider, case, dtype) to `entries`; providers outside the
    check's scope that run on `device` go to `other` (by name)."""
    for op_name, op in OPS.items():
        gpu_providers = [p for p in op.providers if is_gpu_provider(p)]
        if op_name not in CASES:
            if gpu_providers:
                entries += [_entry(op_name, p.name, "-", "-", "fail", reason="no case in bench/gpu_check_ops.py CASES")
                            for p in gpu_providers]
            else:  # informational: providers that run on this device but are not this check's scope
                other += [f"{op_name}:{p.name}" for p in op.providers if p.supports(device, torch.bfloat16) is None]
            continue
        cases = CASES[op_name](geo, device)
        for p in op.providers:
            for dtype in DTYPES:
                action, reason, interpreted = _plan(p, device, dtype, dry_run)
                for case in cases:
                    if action != "run":
                        entries.append(_entry(op_name, p.name, case.name, dtype, action, reason=reason))
                        continue
                    try:
                        res = run_case(case, p.fn, op.reference, dtype, device,
                                       timed=device.type == "cuda" and dtype == torch.bfloat16)
                        entries.append(_entry(op_name, p.name, case.name, dtype, "pass" if res.pop("pass") else "fail",
                                              interpreted=interpreted, reason=reason, **res))
                    except Exception as e:  # noqa: BLE001  (one failing kernel must not hide the others)
                        entries.append(_entry(op_name, p.name, case.name, dtype, "fail", error=f"{type(e).__name__}: {e}"))
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
        del cases


def summarize(entries: list[dict]) -> dict[str, dict]:
    """Per 'op:provider': status (fail if any entry failed, pass if any ran, else skip), the
    worst max-abs / relative-L2 error over its cases and dtypes, and how many entries ran."""
    out: dict[str, dict] = {}
    for e in entries:
        s = out.setdefault(f"{e['op']}:{e['provider']}", {"status": "skip", "max_abs": None, "rel_l2": None, "ran": 0})
        if e["status"] == "fail":
            s["status"] = "fail"
        elif e["status"] == "pass" and s["status"] == "skip":
            s["status"] = "pass"
        if "outputs" in e:
            s["ran"] += 1
            for key in ("max_abs", "rel_l2"):
                if e.get(key) is not None:
                    s[key] = e[key] if s[key] is None else max(s[key], e[key])
    return out
