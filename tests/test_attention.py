"""Transformers and attention on the chip: every layer listed as noisy is noisy (issue: fused fast paths).

PyTorch's TransformerEncoderLayer takes a fused path in eval mode under no_grad that reads linear1/linear2
weights directly, and MultiheadAttention reads in_proj_weight / out_proj.weight itself. These tests prove,
in train and eval mode, with and without no_grad, that a programmed chip reaches every such tensor, that
the noisy forward equals the plain module with the drawn weights substituted (functional_call), and that
the coverage self-check names a layer whose chip does not reach the output.
"""

import contextlib
import copy
import itertools
import warnings

import pytest
import torch
from torch import nn

import nvcim
import nvcim.layers
from helpers import chips_match_plain_module
from nvcim.core.config import DeviceConfig
from nvcim.layers.coverage import CoverageError, check_coverage
from nvcim.evaluate import monte_carlo_evaluate

CFG = DeviceConfig(sigma=0.3)
MODES = list(itertools.product([True, False], [True, False]))  # (training, no_grad)


def _mode(model: nn.Module, training: bool, no_grad: bool):
    model.train(training)
    return torch.no_grad() if no_grad else contextlib.nullcontext()


class Encoder(nn.Module):
    def __init__(self, batch_first=True, stack=False):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=batch_first)
        self.embed = nn.Linear(8, 16)
        self.body = nn.TransformerEncoder(layer, 2, enable_nested_tensor=batch_first) if stack else layer
        self.head = nn.Linear(16, 3)

    def forward(self, x):  # x [B, L, 8] (batch_first) or [L, B, 8]
        return self.head(self.body(self.embed(x)))  # like x, 3 features


class Decoder(nn.Module):
    def __init__(self, batch_first=True):
        super().__init__()
        self.layer = nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=batch_first)
        self.head = nn.Linear(16, 3)

    def forward(self, x):  # x [B, L, 16]; memory = x
        return self.head(self.layer(x, x))


class Attention(nn.Module):
    def __init__(self, batch_first=True, kdim=None):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first, kdim=kdim, vdim=kdim)
        self.head = nn.Linear(16, 3)
        self.kdim = kdim or 16

    def forward(self, x):  # x [B, L, 16]
        kv = x[..., : self.kdim] if self.kdim <= 16 else torch.cat([x, x], -1)[..., : self.kdim]
        out, _ = self.attn(x, kv, kv, need_weights=False)
        return self.head(out)


def _x(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


MODELS = {
    "encoder_layer": (lambda: Encoder(), (2, 5, 8)),
    "encoder_layer_seq_first": (lambda: Encoder(batch_first=False), (5, 2, 8)),
    "encoder_stack": (lambda: Encoder(stack=True), (2, 5, 8)),
    "decoder_layer": (lambda: Decoder(), (2, 5, 16)),
    "decoder_layer_seq_first": (lambda: Decoder(batch_first=False), (5, 2, 16)),
    "mha_batch_first": (lambda: Attention(True), (2, 5, 16)),
    "mha_seq_first": (lambda: Attention(False), (5, 2, 16)),
    "mha_separate_kv": (lambda: Attention(True, kdim=12), (2, 5, 16)),
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("training,no_grad", MODES)
def test_chip_reaches_every_tensor_in_every_mode(name, training, no_grad):
    """Two chips differ in output, and each chip's output equals the plain model with its weights substituted."""
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model, x = build(), _x(shape)
    nvcim.apply_variation_(model, CFG)
    names = [p.name for p in nvcim.noisy_parameters(model)]
    assert not any(n.endswith(".bias") for n in names)
    with _mode(model, training, no_grad):
        outs = chips_match_plain_module(model, x)
        assert not torch.allclose(outs[0], outs[1])
        assert check_coverage(model, x) == names


def test_attention_projections_are_listed():
    model = nn.Sequential(nn.Linear(8, 16))
    enc = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)
    model.add_module("enc", enc)
    nvcim.apply_variation_(model, CFG)
    assert [p.name for p in nvcim.noisy_parameters(model)] == [
        "0.weight", "enc.self_attn.in_proj_weight", "enc.self_attn.out_proj.weight",
        "enc.linear1.weight", "enc.linear2.weight"]
    sep = nvcim.apply_variation_(Attention(kdim=12), CFG)
    assert [p.name for p in nvcim.noisy_parameters(sep)] == [
        "attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.out_proj.weight", "head.weight"]


def test_noise_std_on_attention_projection_matches_closed_form():
    """W_p - W_d of in_proj_weight has std c·σ·max|W| like any other crossbar."""
    torch.manual_seed(0)
    model = nvcim.apply_variation_(Attention(), CFG)
    w = model.attn.in_proj_weight
    diffs = torch.stack([nvcim.draw_chip(model, seed=s)["attn.in_proj_weight"] - nvcim.quantize(w, CFG)
                         for s in range(20)])  # [20, 48, 16]
    expected = CFG.c * CFG.sigma * float(w.abs().max())
    n = diffs.numel()
    assert abs(float(diffs.std()) / expected - 1) < 4 / (2 * n) ** 0.5  # 4 standard errors of a std


def test_mha_masks_and_weights_match_plain_module():
    """With variation at σ = 0 and quantize off, the override is the plain MultiheadAttention, masks included."""
    torch.manual_seed(0)
    for batch_first in (True, False):
        attn = nn.MultiheadAttention(16, 4, batch_first=batch_first, dropout=0.0).eval()
        x = _x((2, 5, 16) if batch_first else (5, 2, 16))
        pad = torch.tensor([[False] * 4 + [True], [False] * 5])
        causal = nn.Transformer.generate_square_subsequent_mask(5)
        want = attn(x, x, x, key_padding_mask=pad, attn_mask=causal, need_weights=True)
        nvcim.apply_variation_(attn, CFG.replace(sigma=0.0, quantize=False))
        got = attn(x, x, x, key_padding_mask=pad, attn_mask=causal, need_weights=True)
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])
        nvcim.remove_variation_(attn)
        assert "forward" not in attn.__dict__


def test_gradients_reach_attention_weights():
    torch.manual_seed(0)
    model = nvcim.apply_variation_(Encoder(), CFG).train()
    model(_x((2, 5, 8))).sum().backward()
    for p in nvcim.noisy_parameters(model):
        assert p.weight.grad is not None and p.weight.grad.abs().sum() > 0, p.name


def test_remove_restores_fused_path_and_outputs():
    torch.manual_seed(0)
    model, x = Encoder(stack=True).eval(), _x((2, 5, 8))
    with torch.no_grad():
        before = model(x)
        nvcim.apply_variation_(model, CFG)
        nvcim.remove_variation_(model)
        after = model(x)
    assert torch.equal(before, after)
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert torch.backends.mha.get_fastpath_enabled()


def test_out_proj_alone_is_still_noisy():
    """Selecting out_proj but not its attention block: the block must still read out_proj's chip."""
    torch.manual_seed(0)
    model, x = Attention().eval(), _x((2, 5, 16))
    nvcim.apply_variation_(model, CFG, include=["attn.out_proj", "head"])
    assert [p.name for p in nvcim.noisy_parameters(model)] == ["attn.out_proj.weight", "head.weight"]
    with torch.no_grad():
        assert check_coverage(model, x) == ["attn.out_proj.weight", "head.weight"]


def test_monte_carlo_of_a_transformer_varies_between_chips():
    """The issue's symptom: MC std was 0 for a transformer classifier in eval mode under no_grad."""
    torch.manual_seed(0)

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = Encoder(stack=True)

        def forward(self, x):  # x [B, 5, 8]
            return self.enc(x).mean(1)  # [B, 3]

    model = Classifier()
    x, y = _x((64, 5, 8)), torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(1))
    res = monte_carlo_evaluate(model, (x, y), DeviceConfig(sigma=0.5), runs=8, seed=0)
    assert len(set(res.per_run_correct)) > 1
    loop = monte_carlo_evaluate(model, (x, y), DeviceConfig(sigma=0.5), runs=8, seed=0, path="chunked")
    assert loop.per_run_correct == res.per_run_correct


class ReadsWeightItself(nn.Module):
    """A user module that bypasses fc's forward: F.linear(x, self.fc.weight)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.nn.functional.linear(x, self.fc.weight, self.fc.bias))


@pytest.mark.parametrize("training,no_grad", MODES)
def test_coverage_names_layers_whose_chip_is_ignored(training, no_grad):
    torch.manual_seed(0)
    model = nvcim.apply_variation_(ReadsWeightItself(), CFG)
    with _mode(model, training, no_grad), pytest.raises(CoverageError) as err:
        check_coverage(model, _x((3, 4)))
    msg = str(err.value)
    assert "never have their chip read" in msg and "stay exact: fc.weight, unused.weight (" in msg
    assert "out.weight" not in msg


def test_monte_carlo_refuses_a_model_whose_layer_ignores_its_chip():
    torch.manual_seed(0)
    model = ReadsWeightItself()
    x, y = _x((8, 4)), torch.zeros(8, dtype=torch.long)
    with pytest.raises(CoverageError, match="fc.weight"):
        monte_carlo_evaluate(model, (x, y), CFG, runs=2)
    assert not nvcim.noisy_modules(model)  # the device model was removed again
    nvcim.apply_variation_(model, CFG, include=["out"])
    assert monte_carlo_evaluate(model, (x, y), CFG, runs=2).runs == 2


class RoutedBranches(nn.Module):
    """Each image takes one of two branches by the sign of its first input (a per-sample router)."""

    def __init__(self):
        super().__init__()
        self.left, self.right, self.out = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):  # x [B, 4]
        go_left = (x[:, :1] > 0).float()  # [B, 1]
        h = torch.zeros_like(x)
        if bool(go_left.any()):
            h = h + go_left * self.left(x)
        if bool((1 - go_left).any()):
            h = h + (1 - go_left) * self.right_branch(x)
        return self.out(h)

    def right_branch(self, x):
        return self.right(x)


def test_monte_carlo_checks_a_routed_branch_on_the_images_that_reach_it():
    """The first two images both go left: the right branch's chip was never read there, and Monte Carlo refused
    the model as one whose layer ignores its chip (routing models had no way through). A branch some image of the
    first batch reads is checked on that batch; one no image reads is still refused."""
    torch.manual_seed(0)
    x = torch.randn(16, 4)
    x[:2, 0], x[2:, 0] = 1.0, -1.0  # images 0, 1 left; the rest right
    model = RoutedBranches()
    y = model(x).argmax(1).detach()
    assert monte_carlo_evaluate(model, (x, y), CFG, runs=2, batch_size=16).runs == 2
    with pytest.raises(CoverageError, match="right.weight"):
        monte_carlo_evaluate(model, (x[:8].abs(), y[:8]), CFG, runs=2)  # every image left


class RoutedTwice(RoutedBranches):
    """The right branch reads its layer twice per forward."""

    def right_branch(self, x):
        return self.right(torch.tanh(self.right(x)))


def test_a_routed_branch_read_twice_is_scored_on_the_loop_path():
    """The path checks (a tensor read twice with read noise, read outside its layer) looked at the first two images
    only, which skip the right branch: "auto" took a batched path and scored the chips otherwise than the loop path
    (review finding)."""
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    x[:2, 0] = 1.0
    model = RoutedTwice()
    y = model(x).argmax(1).detach()
    cfg = nvcim.DeviceConfig(sigma=0.05, read_sigma=0.5)
    loop = monte_carlo_evaluate(model, (x, y), cfg, runs=4, seed=0, path="loop", batch_size=64)
    auto = monte_carlo_evaluate(model, (x, y), cfg, runs=4, seed=0, batch_size=64)
    assert auto.path == "loop" and auto.per_run_correct == loop.per_run_correct
    with pytest.raises(ValueError, match="right.weight"):
        monte_carlo_evaluate(model, (x, y), cfg, runs=2, path="chunked", batch_size=64)


def test_training_checks_a_routed_branch_on_a_batch_too():
    """nvcim train's check before the first step ran on two images and refused the model Monte Carlo accepts."""
    from nvcim.train import TrainConfig
    from nvcim.train.checks import check_layers_read

    torch.manual_seed(0)
    x = torch.randn(16, 4)
    x[:2, 0], x[2:, 0] = 1.0, -1.0
    check_layers_read(RoutedBranches(), x, TrainConfig(method="noise_injection"))  # no ValueError
    with pytest.raises(ValueError, match="'right'"):
        check_layers_read(RoutedBranches(), x[:2], TrainConfig(method="noise_injection"))


def test_coverage_leaves_state_untouched():
    """BatchNorm statistics, controllers and the global RNG are as before the check (train mode)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Linear(6, 2)).train()
    nvcim.apply_variation_(model, CFG)
    nvcim.program_chip_(model, seed=3)
    chip = {p.name: p.control.programmed for p in nvcim.noisy_parameters(model)}
    stats = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    check_coverage(model, _x((5, 4)))
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.control.programmed is chip[p.name] for p in nvcim.noisy_parameters(model))



def test_coverage_is_not_fooled_by_a_layernorm_after_the_layer():
    # the check moved every weight by +s: the same shift in every feature, which a LayerNorm after the layer removes
    # (a transformer's out_proj / linear2 before the post-norm): "read but do not change the output", falsely. Inputs
    # whose features sum to 0 make that shift exactly 0; the ±s bump still moves the output.
    torch.manual_seed(0)
    model = nvcim.apply_variation_(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3)), CFG)
    x = torch.tensor([[1.0, -1.0, 2.0, -2.0], [0.5, 0.25, -0.5, -0.25]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "do not change the output" warning
        assert check_coverage(model, x) == ["0.weight", "2.weight"]

# ---- selections that select nothing ---------------------------------------------------------------
def test_pattern_matching_no_layer_is_an_error():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(nvcim.SelectionError, match=r"include pattern 'features\.\*' matches no layer.*'0', '2'"):
        nvcim.apply_variation_(model, CFG, include=["features.*"])
    with pytest.raises(nvcim.SelectionError, match=r"exclude pattern 'classifer' matches no layer"):
        nvcim.apply_variation_(model, CFG, exclude=["classifer"])
    with pytest.raises(nvcim.SelectionError, match="selects no layer"):
        nvcim.apply_variation_(model, CFG, filter=lambda n, m: False)
    with pytest.raises(nvcim.SelectionError, match="selects no layer"):
        nvcim.apply_variation_(model, CFG, include=["0"], exclude=["0"])
    with pytest.raises(TypeError, match="list of glob patterns"):
        nvcim.apply_variation_(model, CFG, include="0")
    assert not nvcim.noisy_modules(model)


def test_a_pattern_naming_a_module_selects_the_layers_in_it_too():
    # a new user's include=["layers.0.self_attn"] made only in_proj_weight noisy, leaving out_proj exact
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(8, 2))
    nvcim.apply_variation_(model, CFG, include=["0.layers.0.self_attn"])
    assert [n for n, _ in nvcim.noisy_modules(model)] == ["0.layers.0.self_attn", "0.layers.0.self_attn.out_proj"]
    nvcim.remove_variation_(model)
    nvcim.apply_variation_(model, CFG, exclude=["0"])  # a container: everything in it, as "0.*"
    assert [n for n, _ in nvcim.noisy_modules(model)] == ["1"]
    nvcim.remove_variation_(model)
    nvcim.apply_variation_(model, CFG, include=["0.layers.*.linear?"])  # globs still match layer names
    assert [n for n, _ in nvcim.noisy_modules(model)] == [f"0.layers.{i}.linear{j}" for i in (0, 1) for j in (1, 2)]
    # ... only layer names: "*.0" is every layer named so, never a whole block "layer1.0" (a review's catch)
    blocks = nn.Sequential(nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))))  # 0.0.0, 0.0.1
    nvcim.apply_variation_(blocks, CFG, exclude=["*.0"])
    assert [n for n, _ in nvcim.noisy_modules(blocks)] == ["0.0.1"]
    # ... and the layers inside a layer they match: "*.self_attn" takes each attention block with its out_proj (a new
    # user's --digital-layers 'encoder.layers.*.self_attn' left out_proj on the chip, the header naming the blocks)
    nvcim.remove_variation_(model)
    nvcim.apply_variation_(model, CFG, exclude=["0.layers.*.self_attn"])
    assert [n for n, _ in nvcim.noisy_modules(model)] == [
        f"0.layers.{i}.linear{j}" for i in (0, 1) for j in (1, 2)] + ["1"]
    nvcim.remove_variation_(model)
    nvcim.keep_digital_(model, ["0.layers.*.self_attn"])
    assert nvcim.digital_layers(model) == [f"0.layers.{i}.self_attn{s}" for i in (0, 1) for s in ("", ".out_proj")]
    # excluding a layer that is already digital is no typo; including only digital layers says so
    nvcim.apply_variation_(model, CFG, exclude=["0.layers.0.self_attn.out_proj"])
    assert "0.layers.0.self_attn.out_proj" not in dict(nvcim.noisy_modules(model))
    nvcim.remove_variation_(model)
    with pytest.raises(nvcim.SelectionError, match="matches only layers kept digital"):
        nvcim.apply_variation_(model, CFG, include=["0.layers.1.self_attn"])


def test_model_without_supported_layer_is_an_error():
    model = nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3))
    with pytest.raises(nvcim.SelectionError, match="has no layer nvcim can vary") as err:
        nvcim.apply_variation_(model, CFG)
    message = str(err.value)  # the supported types and the layers the model has, on one line
    assert "Linear" in message and "Conv2d" in message and "\n" not in message
    assert "its layers are ['0' (ReLU), '1' (BatchNorm1d)]" in message
    with pytest.raises(nvcim.SelectionError, match=r"its layers are \[\] \(a bare ReLU\)"):
        nvcim.apply_variation_(nn.ReLU(), CFG)
    many = nn.Sequential(*[nn.Sequential(nn.ReLU(), nn.Tanh()) for _ in range(10)])  # 30 submodules
    with pytest.raises(nvcim.SelectionError) as err:
        nvcim.apply_variation_(many, CFG)
    assert "'0' (Sequential), '0.0' (ReLU), '0.1' (Tanh)" in str(err.value)
    assert "'6' (Sequential), '6.0' (ReLU), ... (10 more)]" in str(err.value) and "'6.1'" not in str(err.value)
    with pytest.raises(nvcim.SelectionError):
        monte_carlo_evaluate(model, (torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)), CFG, runs=2)


def test_coverage_catches_the_fused_path(monkeypatch):
    """Were the fused path left on, the self-check would name the layers it bypasses."""
    monkeypatch.setattr(nvcim.layers.handlers, "disable_fused_paths", lambda model: None)
    torch.manual_seed(0)
    model = nvcim.apply_variation_(Encoder(), CFG).eval()
    with torch.no_grad(), pytest.raises(CoverageError) as err:
        check_coverage(model, _x((2, 5, 8)))
    for name in ("body.self_attn.in_proj_weight", "body.linear1.weight", "body.linear2.weight"):
        assert name in str(err.value)
    model.train()  # the reference path runs in train mode: covered there
    check_coverage(model, _x((2, 5, 8)))


def test_a_chip_that_is_read_but_changes_nothing_is_a_warning():
    """Dead activations after a layer: its chip is used, the output cannot move (strict: an error)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every ReLU off
    nvcim.apply_variation_(model, CFG)
    with pytest.warns(UserWarning, match=r"read but do not change the output on these inputs: 0\.weight, 2\.weight"):
        assert check_coverage(model, _x((3, 4))) == ["0.weight", "2.weight"]
    with pytest.raises(CoverageError, match="0.weight"):
        check_coverage(model, _x((3, 4)), strict=True)


def test_a_key_padding_mask_under_the_reference_path_is_said():
    # the fused fast path outputs 0 at padded positions, the reference path nvcim switches to real values: a model
    # that pools over every position scored 84.4 % clean under nvcim against 100 % on its own, nothing said
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 2).eval()
    x = torch.randn(3, 5, 8)
    mask = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    nvcim.apply_variation_(enc, DeviceConfig(sigma=0.1))
    with torch.no_grad():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            enc(x)  # no mask: nothing to say
        with pytest.warns(UserWarning, match="src_key_padding_mask.*pool over the unpadded positions") as said:
            enc(x, src_key_padding_mask=mask)
        assert len([w for w in said if "nvcim" in str(w.message)]) == 1  # the encoder, not each of its layers
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            nvcim.apply_variation_(nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1,
                                                         enable_nested_tensor=False).eval(),
                                   DeviceConfig(sigma=0.1))(x, src_key_padding_mask=mask)  # no nested tensors


class _TokenClassifier(nn.Module):
    """Token ids [B, L] -> embedding -> one Transformer encoder layer -> mean -> logits: a text model."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens):
        return self.head(self.enc(self.emb(tokens)).mean(1))  # [B, 3]


def test_monte_carlo_of_a_model_fed_token_ids_matches_a_per_chip_reference():
    # integer inputs were refused ("images must be normalized floating-point tensors"): no text model could be scored
    from nvcim.evaluate.sampler import run_generator

    torch.manual_seed(0)
    model = _TokenClassifier().eval()
    tokens = torch.randint(0, 20, (24, 5))  # [B, L] int64
    with torch.no_grad():
        labels = model(tokens).argmax(1)
    cfg = DeviceConfig(sigma=0.2)
    res = {p: monte_carlo_evaluate(model, (tokens, labels), cfg, runs=3, seed=0, path=p) for p in ("loop", "auto")}
    assert res["auto"].per_run_correct == res["loop"].per_run_correct
    nvcim.apply_variation_(model, cfg)
    chips = [nvcim.draw_chip(model, generator=run_generator(0, r), sigma=cfg.sigma) for r in range(3)]
    nvcim.remove_variation_(model)
    for chip, correct in zip(chips, res["loop"].per_run_correct):  # plain PyTorch with each chip's weights written in
        plain = copy.deepcopy(model)
        with torch.no_grad():
            for name, w in chip.items():
                plain.get_parameter(name).copy_(w)
            assert int((plain(tokens).argmax(1) == labels).sum()) == correct
    assert len(chips[0]) == 5  # in_proj, out_proj, linear1, linear2, head: the embedding is a lookup, exact
    with pytest.raises(TypeError, match="token ids for an embedding, int64"):
        monte_carlo_evaluate(model, (tokens.to(torch.uint8), labels), cfg, runs=2)


class _MyAttention(nn.MultiheadAttention):
    """A user's attention subclass with its own forward."""

    def forward(self, q, k, v, **kw):
        return super().forward(q, k, v, **kw)


def test_an_attention_subclass_with_its_own_forward_stays_exact_and_its_out_proj_is_not_silently_clean():
    # apply_variation_ crashed (AttributeError in route_through) once such a subclass had no handler
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.att, self.head = _MyAttention(8, 2, batch_first=True), nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.att(x, x, x)[0].mean(1))  # [B, 3]

    torch.manual_seed(0)
    net = Net().eval()
    with pytest.warns(UserWarning, match=r"att \(_MyAttention: a MultiheadAttention with its own forward, 256 weights\), so only 88 of 280"):
        nvcim.apply_variation_(net, DeviceConfig(sigma=0.1))
    x = torch.randn(4, 5, 8)
    with torch.no_grad(), pytest.raises(CoverageError, match=r"att\.out_proj\.weight"):
        check_coverage(net, x)  # its forward reads out_proj.weight itself: said, not evaluated clean


def test_token_ids_calibrate_the_adcs_of_a_text_model():
    # adc_calibration=(ids, y) was refused: "adc_calibration images must be floating-point"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 8), nn.Flatten(), nn.Linear(40, 3)).eval()
    ids = torch.randint(0, 20, (16, 5))  # [B, L] int64
    with torch.no_grad():
        labels = model(ids).argmax(1)
    cfg = DeviceConfig(sigma=0.05, adc_bits=8, adc_clip="calibrated")
    res = monte_carlo_evaluate(model, (ids, labels), cfg, runs=2, seed=0, adc_calibration=(ids[:8], labels[:8]))
    assert res.path == "loop" and 0 <= res.mean <= 100
