"""`liveavatar-rt eval`: arguments and the run -> CSV + JSON + PNG.

    liveavatar-rt eval --minutes 60 --json out/eval.json [--csv out/eval.csv] [--plot out/eval.png]
                       [--model tiny] [--identity NAME] [--clips assets/eval] [--window 30]
                       [--landmarks | --no-landmarks]    # MediaPipe FaceMesh measures (`make face-env`)
    liveavatar-rt eval --from-csv out/eval.csv --json out/eval.json   # re-summarize a (cut-off) run
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli_args import add_load_args, kv_cache_dtype
from ..config import DTYPES
from .clips import DEFAULT_DIR


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, default=60.0, help="minutes of video to generate")
    p.add_argument("--json", default="out/eval.json", help="JSON summary (trend per metric, verdicts, rows)")
    p.add_argument("--csv", default=None, help="per-window CSV (default: the JSON path with .csv)")
    p.add_argument("--plot", default=None, help="PNG, one panel per metric (default: the JSON path with .png)")
    p.add_argument("--model", default="tiny", help="'tiny', a tiny model file (.safetensors) or a published-layout model directory")
    p.add_argument("--identity", default=None, help="identity name from the manifest (default: the first)")
    p.add_argument("--clips", default=str(DEFAULT_DIR), help="clip set directory holding manifest.json")
    p.add_argument("--window", type=float, default=30.0, help="seconds of video per metrics window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    add_load_args(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--landmarks", action=argparse.BooleanOptionalAction, default=None,
                   help="face landmark measures (MediaPipe FaceMesh in .venv-face, `make face-env`): detection "
                        "rate, landmark lip gap vs truth and vs loudness (default: on when the face env exists)")
    p.add_argument("--from-csv", default=None, help="do not generate: summarize and plot an existing CSV")


def run(args: argparse.Namespace) -> int:
    from .landmarks import FaceEnvMissing, face_python
    from .longrun import EvalConfig, run_eval
    from .output import CsvLog, plot, read_rows, summarize, write_json
    from ..benchmark.hardware import fingerprint

    out_json = Path(args.json)
    out_csv = Path(args.csv) if args.csv else out_json.with_suffix(".csv")
    out_png = Path(args.plot) if args.plot else out_json.with_suffix(".png")
    if args.from_csv:
        rows = read_rows(args.from_csv)
        result = {"source_csv": str(args.from_csv)}
    else:
        cfg = EvalConfig(minutes=args.minutes, window_seconds=args.window, model=args.model, identity=args.identity,
                         clips_dir=args.clips, seed=args.seed, dtype=args.dtype, precision=args.precision,
                         kv_cache_dtype=kv_cache_dtype(args), compile=args.compile, schedule=args.schedule,
                         device=args.device,
                         landmarks=args.landmarks)
        if args.landmarks:  # asked for: stop before anything is loaded or written
            try:
                face_python()
            except FaceEnvMissing as e:
                raise SystemExit(f"liveavatar-rt eval --landmarks: {e}") from None
        with CsvLog(out_csv) as log:
            result = run_eval(cfg, on_row=log)
        rows = result.pop("rows")
        result["csv"] = str(out_csv)
    if not rows:
        raise SystemExit("no complete metrics window: run longer than a quarter of --window")
    result.update(summarize(rows))
    result["hardware"] = fingerprint()
    result["plot"] = str(out_png)
    result["rows"] = rows
    what = (f"{result['config']['model']} {result['identity']}" if "config" in result
            else Path(args.from_csv).name)
    plot(rows, out_png, title=f"liveavatar_rt eval: {what}, {result['video_minutes']:.1f} min of video")
    write_json(out_json, result)
    v = result["verdict"]
    print(f"eval: {result['windows']} windows, {result['video_minutes']:.2f} min of video; "
          f"no drift in {', '.join(v['drift_metrics'])}: {v['no_drift']}; all latents finite: {v['all_finite']}")
    if "landmarks" in result:
        print(f"  landmarks: {result['landmarks']}")
    for k, m in result["metrics"].items():
        tr = m["trend"]
        print(f"  {k:17s} mean {m['mean']:9.4g}  slope {tr['slope_per_minute']:+.3g}/min  p {tr['p_value']:.3g}  "
              f"change/std {tr['change_over_std']:+.2f}  trend {m['has_trend']}")
    print(f"wrote {out_json}, {out_csv if not args.from_csv else args.from_csv}, {out_png}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="liveavatar-rt eval", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))
