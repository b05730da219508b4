"""Ops: each file defines references (plain PyTorch) and providers register against them."""
from . import activation, attention, conv, fp8_linear, linear, linear_packed, modulate, norm, rope, vae_ops  # noqa: F401  (populate the registry)
from . import block_norms  # noqa: F401  (the block's norm chains; after norm and modulate, which they compose)
from .linear import patch_conv
from .registry import OPS, OpTable, define
from . import cpu_block_norms, cpu_block_providers, cpu_providers  # noqa: F401  (C++ CPU providers; liveavatar_rt._C loads lazily)
from . import cuda_providers  # noqa: F401  (the CUDA modulate kernel; refused without CUDA kernels)
from . import kv_fp8, qk_norm_rope, rolling_attention, triton_providers  # noqa: F401  (fused ops; Triton loads lazily)

__all__ = ["OPS", "OpTable", "define", "patch_conv"]
