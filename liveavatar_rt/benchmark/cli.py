"""`liveavatar-rt bench` / `python -m bench.e2e`: arguments -> run -> printed summary + JSON.

    liveavatar-rt bench --preset tiny --json out/bench.json            # < 1 min here (1 thread)
    liveavatar-rt bench --preset tiny --compare --json out/compare.json
    liveavatar-rt bench --preset tiny --layout 2+1 --json out/tpp.json # TPP ranks on local processes
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli_args import add_load_args, kv_cache_dtype
from ..config import DTYPES
from .e2e import EXAMPLE, BenchConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", "--model", dest="model", default="tiny",
                   help="preset name ('tiny'), a tiny model file (.safetensors) or a published-layout model directory")
    p.add_argument("--blocks", type=int, default=BenchConfig.blocks, help="blocks of 12 frames to stream")
    p.add_argument("--warmup", type=int, default=BenchConfig.warmup, help="first blocks left out of steady state")
    p.add_argument("--layout", default="1", help="'1' (one process) or a TPP layout: '4+1', '2+1', '2', ...")
    p.add_argument("--image", default=str(EXAMPLE / "portrait.png"))
    p.add_argument("--audio", default=str(EXAMPLE / "speech.wav"), help="looped to the needed length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--decoder", default=None, help="TAEHV-layout decoder weights (.pth/.safetensors, e.g. taew2_1.pth for the 14B) "
                   "instead of the VAE's decoder")
    add_load_args(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--provider", default=None, help="force providers, e.g. 'ref' (LIVEAVATAR_RT_PROVIDER syntax)")
    p.add_argument("--no-encode", dest="encode", action="store_false", help="skip the MP4 encode stage")
    p.add_argument("--threads", type=int, default=BenchConfig.threads,
                   help="torch CPU threads for the run (0: torch's default); recorded in the JSON")
    p.add_argument("--peak-n", type=int, default=BenchConfig.peak_n, help="size of the square matmul peak probe")
    p.add_argument("--compare", action="store_true",
                   help="also run with reference ops everywhere: speedup + output match (exit 1 on mismatch)")
    p.add_argument("--json", default=None, help="write the result here (validated against report.SCHEMA)")


def run(args: argparse.Namespace) -> int:
    from .report import COMPARE_SCHEMA, SCHEMA, format_text, validate, write_json

    cfg = BenchConfig(model=args.model, blocks=args.blocks, warmup=args.warmup, image=args.image, audio=args.audio,
                      seed=args.seed, dtype=args.dtype, precision=args.precision, kv_cache_dtype=kv_cache_dtype(args), compile=args.compile, schedule=args.schedule, decoder=args.decoder, device=args.device, provider=args.provider,
                      layout=args.layout, encode=args.encode, peak_n=args.peak_n,
                      threads=args.threads)
    if args.compare:
        from .compare import run_compare

        result = run_compare(cfg)
    else:
        from .e2e import bench

        result = bench(cfg)
    result["command"] = " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
    problems = validate(result, SCHEMA) + (validate(result["compare"], COMPARE_SCHEMA, "result.compare")
                                            if args.compare else [])
    print(format_text(result))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}", file=sys.stderr)
    if problems:
        print("result does not match the schema:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    if args.compare and not result["compare"]["match"]["ok"]:
        print("outputs do not match the reference ops within the tolerance", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="liveavatar-rt bench", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))
