"""`liveavatar-rt plan`: the per-rank GPU memory of a model on a layout, printed as a table.

    liveavatar-rt plan --model s2v-14b --layout 4+1 --precision fp8 --kv-cache fp8 --size 384x704 --gpu-mem 32
"""
from __future__ import annotations

import argparse
import json
import sys

from ..config import PRECISIONS
from .models import MODELS
from .planner import KV_CACHES, make_plan
from .ranks import GIB

COLUMNS = (("dit", "DiT"), ("vae", "VAE"), ("encoders", "enc"), ("kv", "KV"), ("act", "act"),
           ("decoder", "dec"), ("total", "total"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="s2v-14b", help=f"one of {sorted(MODELS)}")
    p.add_argument("--layout", default="4+1", help="'1' (one process), 'R+1' (R DiT ranks + a VAE rank) or 'R'")
    p.add_argument("--precision", choices=list(PRECISIONS), default="bf16", help="DiT linear layers")
    p.add_argument("--kv-cache", choices=list(KV_CACHES), default="bf16",
                   help="K/V cache storage: bf16, or fp8 (E4M3 + per-token scales; the runtime's --kv-cache fp8)")
    p.add_argument("--size", default=None, help="HEIGHTxWIDTH pixels, multiples of 64 (default: the model's)")
    p.add_argument("--gpu-mem", type=float, default=None, help="GiB per GPU: adds a fits column")
    p.add_argument("--cuda-graphs", choices=("on", "off"), default="on",
                   help="on (the runtime's default on CUDA): one graph memory pool per owned step")
    p.add_argument("--text-encoder", choices=("gpu", "cpu"), default="gpu",
                   help="where umT5 lives: gpu (the runtime loads it on the model's device) or cpu")
    p.add_argument("--json", default=None, help="also write the plan (bytes, notes) to this JSON file")


def format_plan(plan: dict) -> str:
    h, w = plan["size"]
    kv = plan["kv_cache"]
    lines = [f"model {plan['model']}  layout {plan['layout']}  {h}x{w}  weights {plan['precision']}  kv {kv}  "
             f"cuda graphs {'on' if plan['cuda_graphs'] else 'off'}  text encoder on {plan['text_encoder']}",
             "GiB per rank:"]
    fits = plan["gpu_mem_gib"] is not None
    head = f"{'rank':>4}  {'role':<22}" + "".join(f"{t:>8}" for _, t in COLUMNS) + f"{'need':>8}"
    lines.append(head + (f"  fits {plan['gpu_mem_gib']:g} GiB" if fits else ""))
    for r in plan["ranks"]:
        row = f"{r['rank']:>4}  {r['role']:<22}" + "".join(f"{r[k] / GIB:>8.2f}" for k, _ in COLUMNS)
        row += f"{r['need_gib']:>8.2f}"
        if fits:
            row += f"  {'yes' if r['fits'] else 'NO'}"
        lines.append(row)
    lines += [f"note: {n}" for n in plan["notes"]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        plan = make_plan(args.model, args.layout, args.precision, args.kv_cache, args.size, args.gpu_mem,
                         cuda_graphs=args.cuda_graphs == "on", text_encoder=args.text_encoder)
    except ValueError as exc:
        print(f"liveavatar-rt plan: {exc}", file=sys.stderr)
        return 2
    print(format_plan(plan))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(plan, f, indent=2)
    return 0
