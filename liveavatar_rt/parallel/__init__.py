"""Timestep-forcing pipeline parallelism (TPP): the denoising steps spread over a ring of ranks.

    from liveavatar_rt import Pipeline
    with Pipeline.from_pretrained("tiny", layout="4+1") as pipe:   # 4 DiT ranks + 1 VAE rank, gloo
        video = pipe.generate("face.png", pcm, 16000)               # the same frames as layout "1"

Under torchrun: `torchrun --nproc_per_node 5 -m liveavatar_rt.parallel --layout 4+1 --image ...`.
This package is transport and rank loops only; the session (every published rule) is
engine.Session on every layout. See layout.py (who runs what), protocol.py (what travels),
front.py (rank 0: RingExecutor, the driver thread), stage.py (one rank's part of a session),
worker.py (the other ranks' loop), launch.py (starting the ranks) and comm.py (waits that
never hang).
"""
from .comm import PeerLost, TPPAborted, TPPError, TPPTimeout
from .launch import RingOptions
from .layout import Layout

__all__ = ["Layout", "PeerLost", "RingOptions", "TPPAborted", "TPPError", "TPPTimeout"]
