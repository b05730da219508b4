"""Command line: `liveavatar-rt generate | info | bench | eval`."""
from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys

import torch

from .cli_args import add_load_args, kv_cache_dtype
from .config import AUDIO_RATE, CUDA_GRAPH_CHOICES, DTYPES


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def info(_: argparse.Namespace) -> int:
    from . import __version__, _ext
    from .ops import OPS

    print(f"liveavatar_rt {__version__}")
    print(f"python {platform.python_version()}  torch {torch.__version__}  triton {_version('triton')}")
    print(f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    cuda = torch.cuda.is_available()
    print(f"cuda: {torch.cuda.get_device_name(0) if cuda else 'not available'}")
    print(f"extension liveavatar_rt._C: {'loaded' if _ext.available() else 'unavailable: ' + str(_ext.load_error())}")
    settings = [("cpu", torch.bfloat16), ("cpu", torch.float32)] + ([("cuda", torch.bfloat16)] if cuda else [])
    for device, dtype in settings:
        print(f"\nops on {device} / {str(dtype).replace('torch.', '')} (chosen first, then refusals):")
        for name, op in sorted(OPS.items()):
            chosen, _ = op.select(torch.device(device), dtype)
            refused = [f"{p}: {why}" for p, why in op.candidates(torch.device(device), dtype) if why]
            line = f"  {name:16s} -> {chosen}"
            if refused:
                line += "   (" + "; ".join(refused) + ")"
            print(line)
    return 0


def add_generate_arguments(g: argparse.ArgumentParser, layout: str = "1") -> None:
    g.add_argument("--image", required=True, help="reference portrait (png/jpg/webp/...)")
    g.add_argument("--audio", required=True, help="speech audio file (wav/mp3/flac/m4a/...)")
    g.add_argument("--out", required=True, help="output .mp4 path")
    g.add_argument("--model", default="tiny", help="'tiny', a tiny model file (.safetensors) or a published-layout model directory")
    g.add_argument("--prompt", default=None, help="text prompt (models with a umT5 encoder; not the tiny preset)")
    g.add_argument("--seed", type=int, default=0, help="noise seed (and the tiny preset's weight seed)")
    g.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (on a ring: one GPU per rank)")
    g.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    g.add_argument("--decoder", default=None, help="TAEHV-layout decoder weights (.pth/.safetensors, e.g. taew2_1.pth for the 14B) "
                   "instead of the VAE's decoder")
    add_load_args(g)
    g.add_argument("--max-area", type=int, default=None, help="generation area in pixels (default: the model's)")
    g.add_argument("--layout", "--tpp", dest="layout", default=layout, metavar="LAYOUT",
                   help="'1' (one process) or timestep-forcing pipeline parallelism: '4+1' (4 DiT ranks + a VAE "
                        "rank), '2+1', '1+1', or 'R' (VAE on the last DiT rank); local processes, or torchrun's")
    g.add_argument("--timeout", type=float, default=30.0, help="ring: seconds any rank may wait without news")
    g.add_argument("--threads", type=int, default=None,
                   help="torch threads (this process; on a local ring each spawned rank gets 1 unless set)")
    g.add_argument("--cuda-graphs", choices=list(CUDA_GRAPH_CHOICES), default="auto",
                   help="replay the denoising steps as CUDA graphs (auto: on CUDA devices; 'on' without CUDA is an error)")


def load_pipeline(args: argparse.Namespace):
    """The Pipeline `generate`'s arguments describe (layout included)."""
    from .config import StreamConfig
    from .engine import Pipeline

    ring = None
    if args.layout.strip() != "1":
        from .parallel import RingOptions

        ring = RingOptions(timeout=args.timeout, threads=args.threads or 1)
    return Pipeline.from_pretrained(args.model, device=args.device, dtype=DTYPES[args.dtype], seed=args.seed,
                                    layout=args.layout, max_area=args.max_area, ring=ring, precision=args.precision,
                                    decoder=args.decoder, kv_cache_dtype=kv_cache_dtype(args), compile=args.compile,
                                    schedule=args.schedule,
                                    stream=StreamConfig(cuda_graphs=CUDA_GRAPH_CHOICES[args.cuda_graphs]))


def generate(args: argparse.Namespace) -> int:
    """Stream an avatar video for an image + audio file into an MP4 (H.264 + AAC)."""
    import time

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with load_pipeline(args) as pipe:
        load_s = time.perf_counter() - t0
        return _render(args, pipe, load_s)


def _render(args: argparse.Namespace, pipe, load_s: float) -> int:
    import time

    from .io.audio_file import read_audio
    from .io.video import Mp4Writer

    pcm, rate = read_audio(args.audio)
    seconds = len(pcm) / rate
    print(f"model {args.model} loaded in {load_s:.2f} s (layout {pipe.layout}); audio {seconds:.2f} s at {rate} Hz",
          file=sys.stderr)
    t_start = time.perf_counter()
    n_frames, first, n_first = 0, None, 0
    with pipe.session(args.image, prompt=args.prompt, seed=args.seed) as sess:
        sess.push_audio(pcm, rate)
        sess.end_audio()
        total = sess.audio.total_blocks
        with Mp4Writer(args.out, sess.width, sess.height, fps=pipe.stream.fps, sample_rate=AUDIO_RATE) as out:
            for block in sess.frames():
                if first is None:
                    first, n_first = time.perf_counter() - t_start, len(block.video)
                out.write(block.video, block.audio)
                n_frames += len(block.video)
                elapsed = time.perf_counter() - t_start
                print(f"\rblock {block.index + 1}/{total}  frames {n_frames}  {n_frames / elapsed:5.1f} fps",
                      end="", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t_start
    print(file=sys.stderr)
    if pipe.note:
        print(f"note: {pipe.note}")
    print(f"wrote {args.out}: {n_frames} frames ({n_frames / pipe.stream.fps:.2f} s), {sess.width}x{sess.height}, "
          f"layout {pipe.layout}")
    print(f"time to first frame {first:.2f} s (session start to first block; model load {load_s:.2f} s)")
    print(f"throughput {n_frames / elapsed:.1f} fps end to end ({elapsed:.2f} s for {seconds:.2f} s of audio)")
    if n_frames > n_first and elapsed > first:  # after the first block: what a live stream sustains
        steady = (n_frames - n_first) / (elapsed - first)
        print(f"steady state {steady:.1f} fps after the first block = {steady / pipe.stream.fps:.2f}x real time"
              f" ({torch.get_num_threads()} torch threads)")
    return 0


def quantize(args: argparse.Namespace) -> int:
    """Quantize a published-layout model's DiT to fp8 once, so fp8 loads read half the bytes."""
    from .io.published import quantize_published

    quantize_published(args.model, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="liveavatar-rt", description="Live Avatar streaming inference runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices, extension status and each op's providers").set_defaults(fn=info)
    from .benchmark import cli as bench_cli
    from .eval import cli as eval_cli

    b = sub.add_parser("bench", help="end-to-end streaming benchmark: TTFF, FPS, stage times, memory, FLOP/s (JSON)")
    bench_cli.add_arguments(b)
    b.set_defaults(fn=bench_cli.run)
    e = sub.add_parser("eval", help="long-horizon evaluation: lip sync, colour/identity drift, flicker (CSV, JSON, PNG)")
    eval_cli.add_arguments(e)
    e.set_defaults(fn=eval_cli.run)
    from .audio import check as audio_check

    a = sub.add_parser("audio-check", help="streaming (windowed) vs offline wav2vec2 features: error per layer, "
                                           "effect on a block latent")
    audio_check.add_arguments(a)
    a.set_defaults(fn=audio_check.run)
    from .plan import cli as plan_cli

    pl = sub.add_parser("plan", help="per-rank GPU memory of a model on a layout (weights, KV, activations, decoder)")
    plan_cli.add_arguments(pl)
    pl.set_defaults(fn=plan_cli.run)
    q = sub.add_parser("quantize", help="write a published-layout model's fp8 DiT (LoRA merged) into its directory")
    q.add_argument("--model", required=True, help="published-layout model directory")
    q.add_argument("--out", default=None, help="output file (default: MODEL/liveavatar_rt_fp8.safetensors, "
                                               "which --precision fp8 then loads)")
    q.set_defaults(fn=quantize)
    g = sub.add_parser("generate", help="render an MP4 of the avatar speaking an audio file")
    add_generate_arguments(g)
    g.set_defaults(fn=generate)
    from .serve.cli import add_parser as add_serve_parser

    add_serve_parser(sub)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
