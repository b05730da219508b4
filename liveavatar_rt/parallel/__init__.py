"""Timestep-forcing pipeline parallelism (TPP): the denoising steps spread over a ring of ranks.

    from liveavatar_rt.parallel import spawn_local
    with spawn_local("4+1", model="tiny") as ring:          # 4 DiT ranks + 1 VAE rank, gloo
        video = ring.generate("face.png", pcm, 16000)        # the same frames as Pipeline.generate

Under torchrun: `torchrun --nproc_per_node 5 -m liveavatar_rt.parallel --layout 4+1 --image ...`.
See layout.py (who runs what), protocol.py (what travels), front.py (rank 0 / TPPSession),
worker.py (the other ranks) and comm.py (waits that never hang).
"""
from .comm import PeerLost, TPPAborted, TPPError, TPPTimeout
from .front import FrontRing
from .session import TPPSession
from .launch import LocalRing, RingConfig, run_from_env, spawn_local
from .layout import Layout

__all__ = ["FrontRing", "Layout", "LocalRing", "PeerLost", "RingConfig", "TPPAborted", "TPPError", "TPPSession",
           "TPPTimeout", "run_from_env", "spawn_local"]
