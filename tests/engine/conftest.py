import pytest
import torch

from liveavatar_rt.config import StreamConfig, from_name
from liveavatar_rt.engine import BlockStepper, PositionPolicy, SinkOffsets
from liveavatar_rt.model import CausalWanS2V
from liveavatar_rt.model.init import init_random_
from liveavatar_rt.ops import OpTable


@pytest.fixture(scope="module")
def tiny_fp32():
    return init_random_(CausalWanS2V(from_name("tiny"), OpTable("cpu", torch.float32)), seed=0)


def make_stepper(model, positions=None, seed=0, hw=(8, 8), kv_dtype=None):
    st = BlockStepper(model, StreamConfig(), hw, offsets=SinkOffsets(seed=seed), positions=positions or PositionPolicy(),
                      kv_dtype=kv_dtype)
    g = torch.Generator().manual_seed(seed)
    st.set_text(torch.randn(5, model.cfg.text_dim, generator=g))
    h, w = hw
    st.prefill(torch.randn(1, 16, 1, h, w, generator=g), torch.randn(1, 16, 19, h, w, generator=g))
    return st


def block_inputs(model, n, hw=(8, 8)):
    g = torch.Generator().manual_seed(1000 + n)
    noise = torch.randn(1, 16, 3, *hw, generator=g)
    feats = torch.randn(1, model.cfg.audio_layers, model.cfg.audio_dim, 12, generator=g)
    return noise, feats


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality for any dtype (torch.equal has no fp8 kernel on CPU)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.itemsize == 1:
        return torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    return torch.equal(a, b)
