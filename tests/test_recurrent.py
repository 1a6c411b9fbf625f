"""Recurrent layers on the chip: nn.RNN / LSTM / GRU (every layer, direction and projection) and their cells.

Their matrices are crossbars like a Linear layer's, but PyTorch's recurrent forwards never call a submodule: RNN /
LSTM / GRU hand a cached list of their parameters (`_flat_weights`) to a fused kernel, and the cells read their
parameters by name. These tests prove, in train and eval mode, with and without no_grad, that a programmed chip
reaches every matrix (the output equals the plain module reading the drawn weights through functional_call, which
also leaves the module's cached list stale: the next noisy forward must not fall back to the clean weights), that
σ = 0 without quantization is the plain module, that gradients reach every weight, and that Monte Carlo evaluation
of a recurrent classifier gives the same chips on its batched and per-chip paths.
"""

import contextlib
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import nvcim
from helpers import chips_match_plain_module
from nvcim.core.config import DeviceConfig
from nvcim.evaluate import monte_carlo_evaluate
from nvcim.layers.coverage import check_coverage

CFG = DeviceConfig(sigma=0.3)
MODES = list(itertools.product([True, False], [True, False]))  # (training, no_grad)


class Sequence(nn.Module):
    """A recurrent layer over x [B, L, 4] (batch-first), its outputs averaged over the steps (the last step alone
    does not depend on a reverse direction's recurrent matrix), then a Linear head to 3 classes."""

    def __init__(self, rnn: nn.Module, features: int, packed: bool = False):
        super().__init__()
        self.rnn, self.head, self.packed = rnn, nn.Linear(features, 3), packed

    def forward(self, x):  # x [B, L, 4]
        if self.packed:  # sequences of lengths L, L-1, ...: the PackedSequence path of the fused kernel
            lengths = torch.arange(x.shape[1], x.shape[1] - x.shape[0], -1).clamp(min=1)  # [B], decreasing
            _, h = self.rnn(pack_padded_sequence(x, lengths, batch_first=True))
            h = h[0] if isinstance(h, tuple) else h  # LSTM: (h, c)
            return self.head(h[-1])  # [B, 3] from the last layer's final state
        out = self.rnn(x)[0]  # [B, L, features]
        return self.head(out.mean(1))  # [B, 3]


class Unrolled(nn.Module):
    """A cell stepped over x [B, L, 4] by the user's own loop (a keyword-spotting network's usual shape)."""

    def __init__(self, cell: nn.Module):
        super().__init__()
        self.cell, self.head = cell, nn.Linear(cell.hidden_size, 3)

    def forward(self, x):  # x [B, L, 4]
        state = None
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)  # [B, H] (LSTMCell: (h, c))
        h = state[0] if isinstance(state, tuple) else state
        return self.head(h)  # [B, 3]


MODELS = {
    "lstm_2layer_bidirectional": lambda: Sequence(nn.LSTM(4, 6, 2, batch_first=True, bidirectional=True), 12),
    "lstm_projection": lambda: Sequence(nn.LSTM(4, 6, batch_first=True, proj_size=3), 3),
    "gru_2layer": lambda: Sequence(nn.GRU(4, 6, 2, batch_first=True), 6),
    "rnn_relu_bidirectional": lambda: Sequence(nn.RNN(4, 6, batch_first=True, nonlinearity="relu",
                                                      bidirectional=True), 12),
    "lstm_packed": lambda: Sequence(nn.LSTM(4, 6, 2, batch_first=True), 6, packed=True),
    "gru_packed": lambda: Sequence(nn.GRU(4, 6, batch_first=True), 6, packed=True),
    "lstm_cell": lambda: Unrolled(nn.LSTMCell(4, 6)),
    "gru_cell": lambda: Unrolled(nn.GRUCell(4, 6)),
    "rnn_cell_tanh": lambda: Unrolled(nn.RNNCell(4, 6)),
}
EXPECTED = {  # the matrices each model's chip holds, in the order noisy_parameters lists them
    "lstm_2layer_bidirectional": [f"rnn.weight_{m}_l{k}{d}" for k in (0, 1) for d in ("", "_reverse")
                                  for m in ("ih", "hh")],
    "lstm_projection": ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.weight_hr_l0"],
    "gru_2layer": ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.weight_ih_l1", "rnn.weight_hh_l1"],
    "rnn_relu_bidirectional": ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.weight_ih_l0_reverse",
                               "rnn.weight_hh_l0_reverse"],
    "lstm_cell": ["cell.weight_ih", "cell.weight_hh"],
}


def _x(shape=(4, 5, 4), seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _mode(model: nn.Module, training: bool, no_grad: bool):
    model.train(training)
    return torch.no_grad() if no_grad else contextlib.nullcontext()


def test_every_matrix_is_listed_and_no_bias():
    for name, names in EXPECTED.items():
        model = nvcim.apply_variation_(MODELS[name](), CFG)
        assert [p.name for p in nvcim.noisy_parameters(model)] == [*names, "head.weight"], name


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("training,no_grad", MODES)
def test_chip_reaches_every_matrix_in_every_mode(name, training, no_grad):
    """Two chips differ in output, and each chip's output equals the plain model with its weights substituted; the
    second chip's forward follows a functional_call, after which the module's cached weight list is stale."""
    torch.manual_seed(0)
    model, x = MODELS[name](), _x()
    nvcim.apply_variation_(model, CFG)
    names = [p.name for p in nvcim.noisy_parameters(model)]
    with _mode(model, training, no_grad):
        outs = chips_match_plain_module(model, x)
        assert not torch.allclose(outs[0], outs[1])
        assert check_coverage(model, x) == names


@pytest.mark.parametrize("name", MODELS)
def test_sigma_zero_unquantized_is_the_plain_module_and_remove_restores_it(name):
    torch.manual_seed(0)
    model, x = MODELS[name]().eval(), _x()
    with torch.no_grad():
        want = model(x)
        nvcim.apply_variation_(model, CFG.replace(sigma=0.0, quantize=False))
        torch.testing.assert_close(model(x), want, rtol=0, atol=0)
        nvcim.apply_variation_(model, CFG)
        nvcim.program_chip_(model, seed=0)
        assert not torch.allclose(model(x), want)
        nvcim.remove_variation_(model)
        torch.testing.assert_close(model(x), want, rtol=0, atol=0)
    assert all("forward" not in m.__dict__ for m in model.modules())
    rnn = model.rnn if hasattr(model, "rnn") else None
    if rnn is not None:  # its cached list holds the parameters again, not a chip's tensors
        assert all(w is getattr(rnn, n) for w, n in zip(rnn._flat_weights, rnn._flat_weights_names))
    else:
        assert all(isinstance(p, nn.Parameter) for p in model.cell.parameters())


def test_a_user_state_is_passed_through():
    """hx given by the caller (an LSTM's (h0, c0), a cell's h) reaches the recurrence unchanged."""
    torch.manual_seed(0)
    lstm, cell, x = nn.LSTM(4, 6, batch_first=True).eval(), nn.GRUCell(4, 6).eval(), _x()
    h0, c0 = _x((1, 4, 6), 1), _x((1, 4, 6), 2)
    want = lstm(x, (h0, c0))[0], cell(x[:, 0], h0[0])
    for m in (lstm, cell):
        nvcim.apply_variation_(m, CFG.replace(sigma=0.0, quantize=False))
    got = lstm(x, (h0, c0))[0], cell(x[:, 0], h0[0])
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["lstm_2layer_bidirectional", "gru_packed", "lstm_cell", "rnn_cell_tanh"])
def test_gradients_reach_every_recurrent_weight(name):
    """Noise-aware training: the loss's gradient reaches every parameter through the drawn matrices."""
    torch.manual_seed(0)
    model = nvcim.apply_variation_(MODELS[name](), CFG).train()
    model(_x()).sum().backward()
    for p in nvcim.noisy_parameters(model):
        assert p.weight.grad is not None and p.weight.grad.abs().sum() > 0, p.name


def test_monte_carlo_of_a_recurrent_classifier_varies_and_paths_agree():
    """A batched evaluation and the per-chip loop score the same chips (common random numbers)."""
    torch.manual_seed(0)

    class Model(nn.Module):  # LSTM over the sequence, then a GRU cell over its outputs
        def __init__(self):
            super().__init__()
            self.rnn, self.cell, self.head = nn.LSTM(4, 6, 2, batch_first=True), nn.GRUCell(6, 5), nn.Linear(5, 3)

        def forward(self, x):  # x [B, L, 4]
            h = None
            for step in self.rnn(x)[0].unbind(1):  # [B, 6] per step
                h = self.cell(step, h)
            return self.head(h)  # [B, 3]

    model, x = Model(), _x((64, 5, 4))
    y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(1))
    res = monte_carlo_evaluate(model, (x, y), DeviceConfig(sigma=0.5), runs=8, seed=0)
    assert len(set(res.per_run_correct)) > 1
    loop = monte_carlo_evaluate(model, (x, y), DeviceConfig(sigma=0.5), runs=8, seed=0, path="chunked")
    assert loop.per_run_correct == res.per_run_correct
    clean = monte_carlo_evaluate(model, (x, y), DeviceConfig(sigma=0.0, quantize=False), runs=2, seed=0)
    with torch.no_grad():
        assert clean.per_run_correct == [int((model(x).argmax(1) == y).sum())] * 2


@pytest.mark.parametrize("wrap", ["weight_norm", "orthogonal", "prune"])
@pytest.mark.parametrize("kind", ["lstm", "gru_cell", "lstm_cell"])
def test_parametrized_or_pruned_recurrent_weights_are_varied(kind, wrap):
    """A weight under torch.nn.utils.parametrizations (weight_norm, orthogonal) made the LSTM rebuild its weight
    list from the parameters at every call, so the whole layer ran clean, bit for bit; a cell with a parametrized or
    pruned weight raised KeyError (review finding). Checked against the module reading the drawn weights."""
    from torch.nn.utils import parametrizations, prune

    def build():
        torch.manual_seed(0)
        return (Sequence(nn.LSTM(4, 6, batch_first=True), 6) if kind == "lstm"
                else Unrolled(nn.GRUCell(4, 6) if kind == "gru_cell" else nn.LSTMCell(4, 6)))

    model, plain = build(), build()  # plain: the reference, every weight a plain parameter
    layer, name = (model.rnn, "weight_hh_l0") if kind == "lstm" else (model.cell, "weight_hh")
    if wrap == "prune":
        prune.l1_unstructured(layer, name, amount=0.3)
    else:
        getattr(parametrizations, wrap)(layer, name)
    with torch.no_grad():  # the wrapped weight's value as the module reads it, baked into the plain copy
        for n, p in plain.named_parameters():
            owner, attr = n.rsplit(".", 1)
            p.copy_(getattr(model.get_submodule(owner), attr))
    x = _x()
    with torch.no_grad():
        clean = model.eval()(x)
        torch.testing.assert_close(plain.eval()(x), clean)
        nvcim.apply_variation_(model, CFG)
        outs = []
        for seed in (0, 1):
            chip = nvcim.draw_chip(model, seed=seed)
            nvcim.program_chip_(model, seed=seed)
            out = model(x)
            ref = torch.func.functional_call(plain, chip, (x,))  # the plain module reading the drawn weights
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
            outs.append(out)
    assert not torch.allclose(outs[0], clean) and not torch.allclose(outs[0], outs[1])


def test_a_cell_reads_one_training_draw_per_forward_from_the_first_forward_on():
    """A cell stepped over 5 time steps drew a fresh chip at every step of its first training forward (the held draw
    was learnt only after a weight was seen read twice) and one per forward after (review finding)."""
    torch.manual_seed(0)
    model = nvcim.apply_variation_(Unrolled(nn.LSTMCell(4, 6)), CFG).train()
    draws = []
    for p in nvcim.noisy_parameters(model):
        real = p.control.draw_with_gain
        p.control.draw_with_gain = lambda w, *a, _real=real, _name=p.name, **k: draws.append(_name) or _real(w, *a, **k)
    for _ in range(2):
        draws.clear()
        model(_x()).sum().backward()
        assert sorted(draws) == ["cell.weight_hh", "cell.weight_ih", "head.weight"], draws
