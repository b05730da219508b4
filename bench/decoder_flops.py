"""Work of one streamed 12-frame block for the Wan2.1 VAE decoder and the TAEW2.1 decoder.

    python bench/decoder_flops.py [--hw 12x22] [--scale-to 48x88]

FLOPs from torch.utils.flop_counter on the runtime's modules (the VAE with reference ops, whose
convolutions the counter sees), at a small latent size and scaled linearly in h x w to the 14B
size (384x704 video = 48x88 latent); plus a 1-thread bf16 CPU time of each at the small size.
Random weights: the work does not depend on the values. Feeds bench/TPP_MODEL.md.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from liveavatar_rt.engine.conditioning import WARM_LATENTS
from liveavatar_rt.model.taehv import TAEHV, TAEW2_1
from liveavatar_rt.model.vae import VAEConfig, WanVAE
from liveavatar_rt.ops import OpTable


def block_cost(decoder, h: int, w: int) -> tuple[float, float]:
    """A warmed stream decoder's (FLOPs, seconds) for one 3-latent block [16, 3, h, w]."""
    stream = decoder.new_stream()
    stream.decode(torch.randn(16, WARM_LATENTS, h, w))  # the published warm-up, not counted
    z = torch.randn(16, 3, h, w)
    with FlopCounterMode(display=False) as fc:
        stream.decode(z)
    t0 = time.perf_counter()
    stream.decode(z)
    return fc.get_total_flops(), time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hw", default="12x22", help="latent h x w to run at")
    p.add_argument("--scale-to", default="48x88", help="latent h x w to scale the FLOPs to (384x704 video)")
    a = p.parse_args()
    h, w = (int(v) for v in a.hw.split("x"))
    H, W = (int(v) for v in a.scale_to.split("x"))
    torch.set_num_threads(1)
    vae = WanVAE(VAEConfig(dim=96), dtype=torch.bfloat16, ops=OpTable("cpu", torch.bfloat16, force="ref")).init_random_(0)
    tae = TAEHV(TAEW2_1, dtype=torch.bfloat16).init_random_(0)
    out = {}
    for name, dec in (("wan2.1_vae", vae), ("taew2_1", tae)):
        flops, secs = block_cost(dec, h, w)
        out[name] = {"tflop_per_block_scaled": flops * (H * W) / (h * w) / 1e12, "cpu_s_at_hw": secs}
    out["cpu_speedup"] = out["wan2.1_vae"]["cpu_s_at_hw"] / out["taew2_1"]["cpu_s_at_hw"]
    print(json.dumps({"hw": a.hw, "scaled_to": a.scale_to, **out}, indent=1))


if __name__ == "__main__":
    main()
