"""python -m liveavatar_rt.parallel --layout 4+1 --image face.png --audio speech.wav --out out.mp4

`liveavatar-rt generate` with a ring layout (default 4+1). Under torchrun (RANK etc. set) every
process runs this and builds the same Pipeline; ranks above 0 serve the ring inside
`Pipeline.from_pretrained`, rank 0 writes the MP4. Without torchrun the ring is spawned locally
(gloo on 127.0.0.1), this process being rank 0.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback


def main(argv=None) -> int:
    from ..cli import add_generate_arguments, generate

    p = argparse.ArgumentParser(prog="python -m liveavatar_rt.parallel", description=__doc__.split("\n\n")[0])
    add_generate_arguments(p, layout="4+1")
    args = p.parse_args(argv)
    if "RANK" not in os.environ:
        return generate(args)
    from . import comm

    try:  # rank 0 (the others never return from from_pretrained)
        code = generate(args)
    except BaseException:
        traceback.print_exc()
        code = 1
    # daemon threads still blocked in gloo waits make a normal interpreter exit abort (SIGABRT)
    comm.exit_process(int(code or 0))


if __name__ == "__main__":
    sys.exit(main())
