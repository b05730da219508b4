"""The mouth-weighted training loss (recipes/tiny/train/data.py)."""
import torch

from recipes.tiny.train.data import loss_weights, weighted_mse


def _batch(boxes):
    return {"x0": torch.zeros(len(boxes), 16, 3, 16, 16), "box": torch.tensor(boxes, dtype=torch.float32)}


def test_weights_cover_exactly_the_latent_cells_the_box_touches():
    w = loss_weights(_batch([[0.25, 0.5, 0.75, 0.8], [0.0, 0.0, 0.1, 0.1]]), 4.0, (16, 16))
    assert w.shape == (2, 1, 1, 16, 16)
    inside = w[0, 0, 0] == 4.0
    rows, cols = inside.any(1).nonzero().flatten(), inside.any(0).nonzero().flatten()
    assert rows.tolist() == list(range(8, 13)) and cols.tolist() == list(range(4, 12))
    assert inside.sum() == 5 * 8 and (w[0, 0, 0][~inside] == 1).all()
    assert (w[1, 0, 0, :2, :2] == 4).all() and w[1].sum() == 256 + 3 * 4


def test_no_box_or_unit_weight_is_the_plain_mse():
    err = torch.randn(2, 16, 3, 16, 16)
    plain = err.square().mean()
    b = _batch([[0.25, 0.5, 0.75, 0.8]] * 2)
    assert torch.allclose(weighted_mse(err, loss_weights(b, 1.0, (16, 16))), plain)
    del b["box"]
    assert torch.allclose(weighted_mse(err, loss_weights(b, 4.0, (16, 16))), plain)


def test_mouth_error_counts_more():
    b = _batch([[0.25, 0.5, 0.75, 0.8]])
    w = loss_weights(b, 4.0, (16, 16))
    mouth, elsewhere = torch.zeros(1, 16, 3, 16, 16), torch.zeros(1, 16, 3, 16, 16)
    mouth[..., 10, 6] = 1.0
    elsewhere[..., 1, 1] = 1.0
    assert torch.isclose(weighted_mse(mouth, w), 4 * weighted_mse(elsewhere, w))
