"""Command line: `liveavatar-rt info` (more subcommands arrive with the engine issues)."""
from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys

import torch


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="liveavatar-rt", description="Live Avatar streaming inference runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices, extension status and each op's providers").set_defaults(fn=info)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
