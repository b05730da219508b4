"""Helpers shared by the Triton kernels."""
import triton
import triton.language as tl


@triton.jit
def _round_as(x, DTYPE: tl.constexpr):
    """fp32 x rounded to DTYPE, kept in fp32. bf16 by bit arithmetic (round to nearest even, as
    GPUs convert; the interpreter's bf16 cast truncates), other dtypes by a cast."""
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(DTYPE).to(tl.float32)
