"""`liveavatar-rt serve`: argument parsing and the foreground server.

    liveavatar-rt serve --model tiny [--host 127.0.0.1 --port 8000] [--tpp 2+1] [--token T]
                        [--allow-origin https://app.example] [--allow-host avatar.lan]
"""
from __future__ import annotations

import argparse
import sys

from .. import envvars
from ..cli_args import add_load_args, kv_cache_dtype
from ..config import DTYPES
from .config import MiB, ServeConfig


def add_parser(sub) -> argparse.ArgumentParser:
    d = ServeConfig()
    p = sub.add_parser("serve", help="real-time streaming server + web page (audio in, avatar video out)")
    p.add_argument("--model", default="tiny", help="'tiny', a tiny model file (.safetensors) or a published-layout model directory")
    p.add_argument("--host", default=d.host, help="bind address (default loopback; 0.0.0.0 exposes the server)")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--tpp", default=None, metavar="LAYOUT",
                   help="render on a local TPP ring ('2+1', '4+1', ...): one session at a time")
    p.add_argument("--token", default=None,
                   help="require this bearer token (default: $LIVEAVATAR_RT_TOKEN if set, else no auth)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="also accept websockets from pages of this origin (scheme://host[:port]; '*' = any; "
                        "repeatable). Default: only the server's own page and non-browser clients")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also accept this Host name (besides the bind address and localhost; '*' = any; "
                        "repeatable): the name clients use when the server is reached through DNS or a proxy")
    p.add_argument("--max-sessions", type=int, default=d.max_sessions, help="concurrent sessions; more get 'busy'")
    p.add_argument("--max-image-mb", type=float, default=d.max_image_bytes / MiB, help="largest image file (MiB)")
    p.add_argument("--max-image-pixels", type=int, default=d.max_image_pixels)
    p.add_argument("--max-message-mb", type=float, default=d.max_message_bytes / MiB,
                   help="largest websocket message (MiB); the start message carries the image")
    p.add_argument("--min-sample-rate", type=int, default=d.min_sample_rate)
    p.add_argument("--max-sample-rate", type=int, default=d.max_sample_rate)
    p.add_argument("--max-audio-ahead", type=float, default=d.max_audio_ahead_s,
                   help="seconds of audio accepted ahead of the rendered stream before reading pauses")
    p.add_argument("--silence-after", type=float, default=d.silence_after_s,
                   help="seconds without audio after which silence is streamed (idle avatar)")
    p.add_argument("--start-timeout", type=float, default=d.start_timeout_s,
                   help="seconds from connecting to the start message")
    p.add_argument("--audio-timeout", type=float, default=d.audio_timeout_s,
                   help="seconds from 'ready' to the first audio message")
    p.add_argument("--max-silence", type=float, default=d.max_silence_s,
                   help="seconds of silence streamed without client audio before the session is closed")
    p.add_argument("--ack-timeout", type=float, default=d.ack_timeout_s,
                   help="seconds segments may wait on unacknowledged ones before the session is closed")
    p.add_argument("--queue-segments", type=int, default=d.queue_segments,
                   help="segments queued per client before the oldest is dropped")
    p.add_argument("--ack-window", type=int, default=d.ack_window, help="unacknowledged segments in flight")
    p.add_argument("--seed", type=int, default=0, help="weight seed of the tiny preset")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--decoder", default=None, help="TAEHV-layout decoder weights (.pth/.safetensors, e.g. taew2_1.pth for the 14B) "
                   "instead of the VAE's decoder")
    add_load_args(p)
    p.add_argument("--no-warmup", action="store_true",
                   help="skip rendering one block at start-up (it keeps one-time costs out of the first TTFF)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(fn=run)
    return p


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    token = args.token if args.token is not None else envvars.token()
    return ServeConfig(host=args.host, port=args.port, token=token, allowed_origins=tuple(args.allow_origin),
                       allowed_hosts=tuple(args.allow_host), max_sessions=args.max_sessions,
                       max_image_bytes=int(args.max_image_mb * MiB), max_image_pixels=args.max_image_pixels,
                       max_message_bytes=int(args.max_message_mb * MiB), min_sample_rate=args.min_sample_rate,
                       max_sample_rate=args.max_sample_rate, max_audio_ahead_s=args.max_audio_ahead,
                       silence_after_s=args.silence_after, start_timeout_s=args.start_timeout,
                       audio_timeout_s=args.audio_timeout, max_silence_s=args.max_silence,
                       ack_timeout_s=args.ack_timeout, queue_segments=args.queue_segments,
                       ack_window=args.ack_window)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .engine import Engine
    from .server import uvicorn_config

    try:
        cfg = config_from_args(args)
    except ValueError as e:
        raise SystemExit(f"liveavatar-rt serve: {e}")
    print(f"liveavatar-rt serve: loading {args.model}" + (f" on a TPP ring {args.tpp}" if args.tpp else ""),
          file=sys.stderr)
    engine = Engine.load(args.model, tpp=args.tpp, seed=args.seed, dtype=args.dtype,
                         precision=args.precision, decoder=args.decoder,
                         kv_cache_dtype=kv_cache_dtype(args), compile=args.compile, schedule=args.schedule)
    if engine.note:
        print(f"note: {engine.note}", file=sys.stderr)
    if not args.no_warmup:
        print(f"liveavatar-rt serve: warm-up block rendered in {engine.warmup():.1f} s", file=sys.stderr)
    app = create_app(engine, cfg)
    auth = "bearer token required" if cfg.token else "no auth"
    origins = ", ".join(cfg.allowed_origins) if cfg.allowed_origins else "same origin only"
    print(f"liveavatar-rt serve: http://{cfg.host}:{cfg.port}/ ({auth}, websockets from {origins}, "
          f"{app.state.server.capacity} session(s) at most)", file=sys.stderr)
    try:
        uvicorn.Server(uvicorn_config(app, cfg, args.log_level)).run()
    finally:
        engine.close()
    return 0
