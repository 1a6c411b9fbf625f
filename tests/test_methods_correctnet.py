"""CorrectNet-style regularisation (nvcim.methods.correctnet, SPEC §7): the penalty by hand, the loss, no noise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nvcim.layers.noise import noisy_modules
from nvcim.methods import METHODS, correctnet_penalty, create_task, method_config
from nvcim.methods.correctnet import orthogonality_penalty


def f64(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_penalty_of_a_2x2_weight_by_hand():
    # WᵀW = [[10, 14], [14, 20]]; minus I: [[9, 14], [14, 19]]; squares: 81 + 196 + 196 + 361
    assert orthogonality_penalty(f64([[1, 2], [3, 4]])).item() == 834.0
    assert orthogonality_penalty(f64([[0, 1], [1, 0]])).item() == 0.0  # orthogonal


def test_wide_weights_use_the_smaller_gram_matrix_with_the_same_value():
    # W 2×3: WᵀW − I = [[0, 0, 1], [0, 0, 1], [1, 1, 1]] -> 5 (computed from WWᵀ = [[2, 1], [1, 2]]: 10 − 2·4 + 3)
    assert orthogonality_penalty(f64([[1, 0, 1], [0, 1, 1]])).item() == 5.0
    w = torch.randn(3, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    direct = ((w.T @ w - torch.eye(7, dtype=torch.float64)) ** 2).sum()
    assert torch.allclose(orthogonality_penalty(w), direct, atol=1e-10)


def test_conv_weights_are_matrices_of_their_last_two_dimensions():
    w = torch.randn(2, 3, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))  # [O, I, kh, kw]
    by_hand = sum(((w[o, i].T @ w[o, i] - torch.eye(2, dtype=torch.float64)) ** 2).sum() for o in range(2) for i in range(3))
    assert torch.allclose(orthogonality_penalty(w), by_hand, atol=1e-10)


def tiny_model():
    m = nn.Sequential(nn.Conv2d(1, 1, 2, bias=False), nn.Flatten(), nn.Linear(1, 2)).double()
    with torch.no_grad():
        m[0].weight.copy_(f64([[[[1, 2], [3, 4]]]]))  # penalty 834
        m[2].weight.copy_(f64([[1], [2]]))  # [2, 1]: WᵀW − I = [[4]] -> 16
        m[2].bias.copy_(f64([0.5, -0.5]))
    return m


def test_only_the_crossbar_weights_are_penalised():
    m = tiny_model()
    assert correctnet_penalty(m).item() == 834.0 + 16.0
    m.insert(2, nn.BatchNorm1d(1).double())  # BatchNorm and biases are digital: not penalised
    assert correctnet_penalty(m).item() == 850.0


def test_loss_is_cross_entropy_plus_lambda_times_the_penalty_without_noise():
    m = tiny_model()
    task = create_task("correctnet", m, ortho_lambda=0.01)  # no device needed: trained without noise
    assert noisy_modules(m) == []
    x = torch.ones(3, 1, 2, 2, dtype=torch.float64)  # conv output 1+2+3+4 = 10: logits [10.5, 19.5]
    y = torch.tensor([0, 1, 1])
    loss, out = task(x, y)
    assert torch.equal(out, f64([[10.5, 19.5]] * 3))
    assert torch.allclose(loss, F.cross_entropy(out, y) + 0.01 * 850.0, atol=1e-12)
    loss.backward()  # the penalty's gradient: d/dW of ‖WᵀW − I‖²_F is 4·W(WᵀW − I)
    w = m[2].weight.detach()
    g_ce = torch.autograd.grad(F.cross_entropy(m(x), y), m[2].weight)[0]
    assert torch.allclose(m[2].weight.grad, g_ce + 0.01 * 4 * w @ (w.T @ w - 1), atol=1e-10)


def test_lambda_default_validation_and_traits():
    assert method_config("correctnet").ortho_lambda == 5e-4
    for bad in (-1.0, float("nan"), "x"):
        with pytest.raises(ValueError, match="ortho_lambda"):
            method_config("correctnet", ortho_lambda=bad)
    c = METHODS.get("correctnet")
    assert not c.uses_device and c.label == "CorrectNet"
    assert c.search == "ortho_lambda" and 5e-4 in c.search_values  # λ searched like β, the authors' value a candidate
