"""Tests of applying the device model to nn.Modules: selection, restore, resampling, chips, gradients."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nvcim
import nvcim.layers
from nvcim.core.config import DeviceConfig


class Net(nn.Module):
    """Every supported layer kind: Conv1d, Conv2d (plain, grouped, depthwise), ConvTranspose2d, Linear; plus BN
    and biases."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.deconv = nn.ConvTranspose2d(8, 8, 3, padding=1, groups=2)
        self.conv1d = nn.Conv1d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16, 5)

    def forward(self, x):  # x [B, 3, 4, 4]
        x = F.relu(self.bn(self.conv(x)))  # [B, 8, 4, 4]
        x = self.deconv(self.depthwise(self.grouped(x)))  # [B, 8, 4, 4]
        x = self.conv1d(x.flatten(2))  # [B, 4, 16]
        return self.fc(x.flatten(1))  # [B, 5]


LAYERS = ["conv", "grouped", "depthwise", "deconv", "conv1d", "fc"]


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net()


@pytest.fixture
def x():
    return torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))


def test_every_supported_layer_becomes_noisy(net):
    nvcim.apply_variation_(net, DeviceConfig(sigma=0.1))
    assert [n for n, _ in nvcim.noisy_modules(net)] == LAYERS
    assert not nvcim.layers.controls(net.bn)


def test_filters(net):
    nvcim.apply_variation_(net, DeviceConfig(), exclude=["fc"])
    assert [n for n, _ in nvcim.noisy_modules(net)] == LAYERS[:-1]
    nvcim.remove_variation_(net)
    nvcim.apply_variation_(net, DeviceConfig(), include=["conv*"])
    assert [n for n, _ in nvcim.noisy_modules(net)] == ["conv", "conv1d"]
    nvcim.remove_variation_(net)
    nvcim.apply_variation_(net, DeviceConfig(), lambda name, m: isinstance(m, nn.Linear))
    assert [n for n, _ in nvcim.noisy_modules(net)] == ["fc"]


def test_remove_restores_bit_for_bit(net, x):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()
    y0 = net(x)
    nvcim.apply_variation_(net, DeviceConfig(sigma=0.5))
    net.train()
    opt_free_forward = net(x)  # noisy forwards must not touch the weights
    nvcim.program_chip_(net, seed=0)
    net(x)
    nvcim.remove_variation_(net)
    assert not nvcim.noisy_modules(net) and all("forward" not in m.__dict__ for m in net.modules())
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k and "num_batches" not in k)
    net.load_state_dict(before)
    net.eval()
    assert torch.equal(net(x), y0)
    assert not torch.equal(opt_free_forward, y0)


def test_context_manager(net, x):
    net.eval()
    y0 = net(x)
    with nvcim.device_variation(net, DeviceConfig(sigma=0.3)):
        assert len(nvcim.noisy_modules(net)) == len(LAYERS)
        assert not torch.equal(net(x), y0)
    assert not nvcim.noisy_modules(net)
    assert torch.equal(net(x), y0)


def test_training_mode_resamples_every_forward(net, x):
    nvcim.apply_variation_(net, DeviceConfig(sigma=0.2))
    net.train()
    assert not torch.equal(net(x), net(x))
    torch.manual_seed(5)
    a = net(x)
    torch.manual_seed(5)
    assert torch.equal(a, net(x))  # the global RNG drives training noise


def test_sigma_zero_equals_quantized_model(net, x):
    net.eval()
    cfg = DeviceConfig(sigma=0.0)
    ref = copy.deepcopy(net)
    with torch.no_grad():
        for name in LAYERS:
            getattr(ref, name).weight.copy_(nvcim.quantize(getattr(net, name).weight, cfg))
    nvcim.apply_variation_(net, cfg)
    assert torch.equal(net(x), ref(x))
    # quantize off and σ = 0: the float model itself
    nvcim.apply_variation_(net, cfg.replace(quantize=False))
    with nvcim.variation_disabled(net):
        y_clean = net(x)
    assert torch.equal(net(x), y_clean)


def test_programmed_chip_is_fixed_and_reproducible(net, x):
    net.eval()
    nvcim.apply_variation_(net, DeviceConfig(sigma=0.3))
    nvcim.program_chip_(net, seed=42)
    a1, a2 = net(x), net(x)
    assert torch.equal(a1, a2)
    nvcim.program_chip_(net, seed=42)
    assert torch.equal(net(x), a1)
    nvcim.program_chip_(net, seed=43)
    assert not torch.equal(net(x), a1)
    g = torch.Generator().manual_seed(42)
    nvcim.program_chip_(net, generator=g)
    assert torch.equal(net(x), a1)
    # the chip equals a plain model holding the drawn weights
    chip = nvcim.draw_chip(net, seed=42)
    plain = copy.deepcopy(net)
    nvcim.remove_variation_(plain)
    plain.load_state_dict({**plain.state_dict(), **chip})
    assert torch.equal(plain(x), a1)
    nvcim.clear_chip_(net)
    assert not torch.equal(net(x), net(x))


def test_straight_through_gradient_equals_gradient_wrt_wp(net, x):
    net.eval()  # fixed BN statistics so both computations see the same function
    nvcim.apply_variation_(net, DeviceConfig(sigma=0.3))
    nvcim.program_chip_(net, seed=7)
    y = torch.randint(0, 5, (6,), generator=torch.Generator().manual_seed(0))
    F.cross_entropy(net(x), y).backward()
    grads = {n: getattr(net, n).weight.grad.clone() for n in LAYERS}

    plain = copy.deepcopy(net)
    nvcim.remove_variation_(plain)
    chip = nvcim.draw_chip(net, seed=7)
    with torch.no_grad():
        for n in LAYERS:
            getattr(plain, n).weight.copy_(chip[f"{n}.weight"])
    plain.zero_grad()
    F.cross_entropy(plain(x), y).backward()
    for n in LAYERS:
        assert torch.equal(getattr(plain, n).weight.grad, grads[n]), n
    assert net.grouped.bias.grad is not None  # biases train as usual


@pytest.mark.parametrize("layer,shape", [
    (nn.ConvTranspose1d(4, 6, 3, stride=2), (2, 4, 5)),
    (nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, dilation=2), (2, 4, 5, 5)),
    (nn.ConvTranspose3d(4, 6, 2, stride=2, groups=2, bias=False), (2, 4, 3, 3, 3)),
])
def test_transposed_convolutions_run_on_the_chip_weights(layer, shape):
    """A programmed transposed conv equals the plain layer holding the chip's weights, output_size included."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    plain = copy.deepcopy(layer)
    nvcim.apply_variation_(layer, DeviceConfig(sigma=0.3))
    nvcim.program_chip_(layer, seed=3)
    with torch.no_grad():
        plain.weight.copy_(nvcim.draw_chip(layer, seed=3)["weight"])
    sizes = [None, [n + 1 for n in plain(x).shape[2:]]]  # the second: one more pixel, through output_padding
    for size in sizes:
        out = layer(x, output_size=size)
        assert torch.equal(out, plain(x, output_size=size))
        assert size is None or list(out.shape[2:]) == size


def test_state_dict_loads_into_plain_model(net):
    nvcim.apply_variation_(net, DeviceConfig(sigma=0.3))
    sd = net.state_dict()
    plain = Net()
    plain.load_state_dict(sd)  # strict: same keys, same shapes
    assert set(sd) == set(Net().state_dict())


def test_sigma_scope_and_set_sigma(net, x):
    nvcim.apply_variation_(net, DeviceConfig(sigma=0.1))
    with nvcim.sigma_scope(net, 0.0):
        assert all(nvcim.layers.controls(m)["weight"].sigma == 0.0 for _, m in nvcim.noisy_modules(net))
    assert all(nvcim.layers.controls(m)["weight"].sigma == 0.1 for _, m in nvcim.noisy_modules(net))
    nvcim.set_sigma_(net, 0.4)
    assert all(nvcim.layers.controls(m)["weight"].sigma == 0.4 for _, m in nvcim.noisy_modules(net))
    with pytest.raises(ValueError, match="sigma"):
        nvcim.set_sigma_(net, -1)


def test_noise_magnitude_in_model_matches_c_sigma_s(net):
    cfg = DeviceConfig(sigma=0.25)
    net.fc = nn.Linear(400, 500)
    nvcim.apply_variation_(net, cfg)
    chip = nvcim.draw_chip(net, seed=0)
    w = net.fc.weight
    diff = chip["fc.weight"] - nvcim.quantize(w, cfg)
    assert diff.std().item() == pytest.approx(cfg.c * 0.25 * w.abs().max().item(), rel=0.02)


def test_quantization_is_cached_per_weight_version_inside_the_cached_block(net, x):
    from nvcim.layers.noise import quantization_cached

    nvcim.apply_variation_(net, DeviceConfig(sigma=0.1))
    ctrl = nvcim.layers.controls(net.fc)["weight"]
    with quantization_cached():
        p1 = ctrl.prepared(net.fc.weight)
        with quantization_cached():  # nested: the same cache
            assert ctrl.prepared(net.fc.weight) is p1
        with torch.no_grad():
            net.fc.weight.mul_(2)  # an optimizer step changes the weight in place
        p2 = ctrl.prepared(net.fc.weight)
        assert p2 is not p1 and torch.allclose(p2.scale, 2 * p1.scale)
    with quantization_cached():  # a new block starts afresh
        assert ctrl.prepared(net.fc.weight) is not p2
    assert ctrl.prepared(net.fc.weight) is not ctrl.prepared(net.fc.weight)  # outside: never cached


def test_weight_written_through_data_is_seen_by_the_next_forward(net, x):
    """`.data` writes bump no version counter: outside quantization_cached() nothing is cached, so the
    common `p.data.clamp_()` between steps is always seen (σ = 0: the forward is the quantized model)."""
    nvcim.apply_variation_(net, DeviceConfig(sigma=0.0))
    net.eval()
    net(x)
    net.fc.weight.data.mul_(0)
    net.fc.bias.data.zero_()
    assert torch.count_nonzero(net(x)) == 0


def test_bad_cfg_type(net):
    with pytest.raises(TypeError):
        nvcim.apply_variation_(net, {"sigma": 0.1})


def test_a_chip_of_a_model_without_variation_is_refused_not_silently_clean():
    model = nn.Sequential(nn.Linear(4, 3))
    for verb in (nvcim.program_chip_, nvcim.draw_chip):
        with pytest.raises(nvcim.SelectionError, match="no layer with variation applied.*apply_variation_"):
            verb(model, seed=0)
    nvcim.apply_variation_(model, DeviceConfig(sigma=0.1))
    nvcim.program_chip_(model, seed=0)  # once applied, fine


def test_layers_nvcim_cannot_vary_are_named_not_silently_exact():
    class Tagger(nn.Module):  # a new user's Embedding + Bilinear + Linear: only the Linear was noisy, nothing said
        def __init__(self):  # (an LSTM here before nvcim had a handler for recurrent layers)
            super().__init__()
            self.emb, self.pair, self.h = nn.Embedding(10, 4), nn.Bilinear(4, 4, 4), nn.Linear(4, 2)

    tagger = Tagger()
    with pytest.warns(UserWarning, match=r"1 layer\(s\) nvcim cannot vary stay exact: pair \(Bilinear, 64 weights\), so only 8 of 72 matrix weights"):
        nvcim.apply_variation_(tagger, DeviceConfig(sigma=0.1))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nvcim.remove_variation_(tagger)
        nvcim.apply_variation_(tagger, DeviceConfig(sigma=0.2))  # once per model: training applies it repeatedly
        nvcim.apply_variation_(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)), DeviceConfig(sigma=0.1))


def test_a_matrix_the_model_multiplies_by_itself_is_named_not_silently_exact():
    # x @ self.W with a raw nn.Parameter: 16,384 of 16,640 weights stayed exact, 100.00 +- 0.00 at any sigma, nothing said
    class Raw(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = nn.Parameter(torch.randn(256, 64))
            self.cls = nn.Parameter(torch.zeros(1, 1, 64))  # a token / bias-like tensor: one axis only, not a matrix
            self.fc2, self.emb = nn.Linear(64, 4), nn.Embedding(10, 64)  # a lookup table: not a crossbar product

        def forward(self, x):  # x [B, 256]
            return self.fc2(x @ self.W + self.cls[0])  # [B, 4]

    with pytest.warns(UserWarning, match=r"1 matrix outside any layer stays exact \(16,384 weights\): W \[256, 64\]; "
                                         r"if the model multiplies by them"):
        nvcim.apply_variation_(Raw(), DeviceConfig(sigma=0.1))
    import warnings
    from torch.nn.utils import parametrize

    class Sym(nn.Module):
        def forward(self, w):
            return w.triu() + w.triu(1).t()

    plain = nn.Sequential(nn.Linear(8, 8), nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), nn.Embedding(9, 8))
    parametrize.register_parametrization(plain[0], "weight", Sym())  # its `original` belongs to the Linear
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nvcim.apply_variation_(plain, DeviceConfig(sigma=0.1))


def test_a_matrix_outside_any_layer_kept_digital_is_acknowledged_not_warned_about():
    """A ViT's additive positional embedding [1, N, D] is no product: keep_digital_ (--digital-layers) names it so,
    the warning goes, the mark survives `digital_layers` -> keep_digital_(exact=True) (a checkpoint's round trip)."""
    import warnings

    from nvcim.layers.noise import SelectionError, digital_layers, keep_digital_

    class ViTish(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos_embed = nn.Parameter(torch.randn(1, 5, 8))
            self.block = nn.Module()
            self.block.rel_bias = nn.Parameter(torch.randn(5, 5))
            self.head = nn.Linear(8, 3)

        def forward(self, x):  # x [B, 5, 8]
            return self.head((x + self.pos_embed).mean(1))  # [B, 3]

    with pytest.warns(UserWarning, match=r"2 matrices outside any layer stay exact .* pos_embed \[1, 5, 8\], "
                                         r"block.rel_bias \[5, 5\]; .* keep them digital to say so"):
        nvcim.apply_variation_(ViTish(), DeviceConfig(sigma=0.1))
    model = keep_digital_(ViTish(), ["pos_embed", "block"])
    assert digital_layers(model) == ["pos_embed", "block.rel_bias"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nvcim.apply_variation_(model, DeviceConfig(sigma=0.1))  # head varied, no warning
    assert [p.name for p in nvcim.layers.noise.noisy_parameters(model)] == ["head.weight"]
    nvcim.remove_variation_(model)
    again = keep_digital_(ViTish(), digital_layers(model), exact=True)
    assert digital_layers(again) == ["pos_embed", "block.rel_bias"]
    keep_digital_(again, ["head"])  # replaces the marks: the matrices are named again
    assert digital_layers(again) == ["head"]
    with pytest.raises(SelectionError, match=r"'pos' matches no layer: the layers are \['head'\] and matrices "
                                             r"outside any layer \['pos_embed', 'block.rel_bias'\]"):
        keep_digital_(again, ["pos"])
    assert digital_layers(again) == ["head"]  # nothing half-done

    class OnlyEmbedding(nn.Module):  # no layer nvcim varies; its one matrix kept digital
        def __init__(self):
            super().__init__()
            self.pos_embed, self.norm = nn.Parameter(torch.randn(1, 5, 8)), nn.LayerNorm(8)

    with pytest.raises(SelectionError, match="has no layer nvcim can vary"):  # not "every layer ... kept digital"
        nvcim.apply_variation_(keep_digital_(OnlyEmbedding(), ["pos_embed"]), DeviceConfig(sigma=0.1))


class _LoRALinear(nn.Linear):
    """A user's Linear subclass with its own forward (W x + B A x): nvcim's Linear forward would drop B A x."""

    def __init__(self, i, o, r=2):
        super().__init__(i, o)
        self.a, self.b = nn.Parameter(torch.randn(r, i)), nn.Parameter(torch.randn(o, r))

    def forward(self, x):
        return super().forward(x) + F.linear(F.linear(x, self.a), self.b)


class _TaggedLinear(nn.Linear):
    """A subclass that keeps Linear's forward (only adds an attribute): still varied."""

    tag = "mine"


def test_a_subclass_with_its_own_forward_keeps_it_and_is_named_as_exact_not_silently_replaced():
    # a LoRA-style nn.Linear subclass lost its forward under nvcim: 14 % for a model that scores 100 %, nothing said
    torch.manual_seed(0)
    model = nn.Sequential(_LoRALinear(6, 5), nn.Tanh(), _TaggedLinear(5, 3)).eval()
    x = torch.randn(8, 6)
    with torch.no_grad():
        lora_out = model[0](x)  # [8, 5] its own forward, before nvcim
    with pytest.warns(UserWarning, match=r"stay exact: 0 \(_LoRALinear: a Linear with its own forward, 52 weights\)"):
        nvcim.apply_variation_(model, DeviceConfig(sigma=0.2))
    assert [n for n, _ in nvcim.layers.noise.selected_layers(model)] == ["2"]  # the subclass without a forward
    nvcim.program_chip_(model, seed=0)
    with torch.no_grad():
        assert torch.equal(model[0](x), lora_out)  # exact, with its B A x
        noisy = model[2](torch.tanh(lora_out))
        clean = F.linear(torch.tanh(lora_out), model[2].weight, model[2].bias)
    assert not torch.allclose(noisy, clean)  # the plain subclass is on the chip
    with pytest.raises(nvcim.SelectionError, match=r"_LoRALinear: a Linear with its own forward.*register_layer"):
        nvcim.apply_variation_(nn.Sequential(_LoRALinear(6, 5)), DeviceConfig(sigma=0.2))


class _Twice(nn.Module):
    """One Linear called twice per forward (weight sharing)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):  # x [B, 8]
        return self.lin(x), self.lin(x)  # each [B, 8]


@pytest.mark.parametrize("effects", [{}, {"adc_bits": 8, "tile_rows": 4}, {"read_sigma": 0.05}])
def test_a_layer_called_twice_in_one_training_forward_reads_one_draw_as_the_chip_would(effects):
    """A training forward is one pass over one chip: a layer called twice sees the
    same programmed weights, not two independent draws; the next forward draws afresh; read noise stays per read."""
    import warnings

    torch.manual_seed(0)
    m = _Twice()
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ADC's uncalibrated range
        nvcim.apply_variation_(m, DeviceConfig(sigma=0.3, **effects))
        m.train()
        m(x)  # the first forward learns which weights are read twice (only theirs are held: memory)
        a, b = m(x)
        c, _ = m(x)
    assert not torch.equal(a, c)  # a fresh chip per forward
    if effects.get("read_sigma"):  # the same programmed chip read twice: the reads differ by read noise only
        assert not torch.equal(a, b) and (a - b).abs().max() < 0.5 * (a - c).abs().max()
    else:
        assert torch.equal(a, b)
    (a.sum() + b.sum()).backward()  # the straight-through gradient still reaches the weight
    assert m.lin.weight.grad is not None and torch.isfinite(m.lin.weight.grad).all()
    nvcim.remove_variation_(m)
    assert not hasattr(m, "_nvcim_forward_scope") and torch.equal(m(x)[0], m(x)[1])


def test_an_interrupted_forward_does_not_freeze_later_training_draws():
    """KeyboardInterrupt skips forward hooks: the scope it left open is dropped at the model's next forward (it froze
    every later draw of every varied model in that thread on one chip)."""

    class Stop(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.stop = nn.Linear(4, 4), False

        def forward(self, x):
            y = self.lin(x)
            if self.stop:
                raise KeyboardInterrupt
            return self.lin(y)

    torch.manual_seed(0)
    m = nvcim.apply_variation_(Stop(), DeviceConfig(sigma=0.3)).train()
    other = nvcim.apply_variation_(nn.Sequential(nn.Linear(4, 4)), DeviceConfig(sigma=0.3)).train()
    x = torch.randn(3, 4)
    m(x)
    m.stop = True
    with pytest.raises(KeyboardInterrupt):
        m(x)
    m.stop = False
    assert not torch.equal(other(x), other(x)) and not torch.equal(m(x), m(x))


def test_a_model_of_inference_tensors_still_trains_its_draws():
    with torch.inference_mode():
        m = nn.Sequential(nn.Linear(4, 4))  # parameters made under inference_mode: no version counter
        nvcim.apply_variation_(m, DeviceConfig(sigma=0.3))
        x = torch.randn(2, 4)
        assert not torch.equal(m(x), m(x))


@pytest.mark.parametrize("cfg", [DeviceConfig(sigma=0.2, stuck_at=(0.05, 0.05), drift_time=3600.0, drift_compensation=True),
                                 DeviceConfig(sigma=0.2, adc_bits=6, tile_rows=8, adc_clip="calibrated")],
                         ids=["faults-drift", "adc-calibrated"])
def test_a_model_moved_to_float64_after_program_chip_keeps_its_chip(cfg):
    """`.double()` after `program_chip_` raised a dtype mismatch (the chip stayed float32); the chip follows the model
    now, with its drift gain and calibrated ADC range: the float64 model's outputs are the float32 model's (same chip)
    to float32 precision. (Read noise is drawn in the weights' dtype: other numbers in float64, same distribution.)"""
    import warnings
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(5, 12)
    nvcim.apply_variation_(model, cfg)
    twin = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an uncalibrated chip would warn
        for m in (model, twin):
            nvcim.program_chip_(m, seed=3)
            if cfg.adc_clip == "calibrated":
                nvcim.calibrate_adc_(m, x)
        twin.double()
        with torch.no_grad():
            for _ in range(2):
                want, got = model(x), twin(x.double())
                assert got.dtype == torch.float64
                torch.testing.assert_close(got.float(), want, rtol=1e-4, atol=1e-5)


def test_a_chip_converted_inside_an_override_keeps_its_drift_gain_for_read_noise():
    """A review's catch: the first forward after `.double()` inside `sigma_scope` (an `overridden` block) converted
    the chip and re-keyed its read gain; on exit `programmed` was restored but `read_gain` was not, and the drift
    compensation gain on read noise was dropped from then on (~22 % less read noise)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    nvcim.apply_variation_(model, DeviceConfig(sigma=0.2, read_sigma=0.05, drift_time=3600.0, drift_compensation=True))
    nvcim.program_chip_(model, seed=1)
    model.double()
    with torch.no_grad(), nvcim.sigma_scope(model, 0.2):
        model(torch.randn(2, 12, dtype=torch.float64))
    for p in nvcim.noisy_parameters(model):
        ctrl = p.control
        assert ctrl.read_gain is not None and ctrl.read_gain[0] is ctrl.programmed
    with torch.no_grad():
        model(torch.randn(2, 12, dtype=torch.float64))
    for p in nvcim.noisy_parameters(model):
        assert p.control.read_gain[0] is p.control.programmed


@pytest.mark.parametrize("seed", [1.5, -1, True, "3"])
def test_program_chip_refuses_a_seed_that_is_no_seed(seed):
    """program_chip_(seed=1.5) programmed chip 1 and seed=-1 a chip of its own, silently (a new user's trial)."""
    model = nn.Linear(3, 2)
    nvcim.apply_variation_(model, DeviceConfig(sigma=0.1))
    with pytest.raises(ValueError, match="is invalid: use an integer from 0 to 2\\*\\*63 - 1"):
        nvcim.program_chip_(model, seed=seed)


def test_register_layer_refuses_to_replace_a_handler_silently():
    """A plugin's register_layer(nn.Linear, ...) replaced how every Linear is simulated without a word (a plugin
    review, session 34)."""
    from nvcim.layers.handlers import LAYER_HANDLERS, register_layer

    with pytest.raises(ValueError, match="Linear already has a handler: pass replace=True"):
        register_layer(nn.Linear, lambda m: ["weight"], lambda m, x: x)
    kept = LAYER_HANDLERS[nn.Linear]
    try:
        register_layer(nn.Linear, kept.attrs, kept.forward, replace=True)
    finally:
        LAYER_HANDLERS[nn.Linear] = kept
