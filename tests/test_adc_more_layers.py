"""The ADC simulation (SPEC §8) on the layers beyond Linear and Conv2d: Conv1d, grouped and depthwise Conv2d,
MultiheadAttention (packed and separate projections, self- and cross-attention) and Transformer blocks in their
fused inference path. Closed forms: with B = 24 a chip's output is the quantized model's; at small B each layer
is exactly nvcim.core's sliced product on its programmed levels (an attention checked against a hand-written
per-head float64 loop)."""

import math

import pytest
import torch
from torch import nn

import nvcim
from nvcim.core.adc import AdcConfig, sliced_linear
from nvcim.core.adc_conv import sliced_conv2d
from nvcim.core.config import DeviceConfig
from nvcim.evaluate.montecarlo import monte_carlo_evaluate


def _run(model: nn.Module, inputs: tuple, cfg: DeviceConfig, seed: int = 1):
    """model(*inputs) on the chip program_chip_(seed) gives, under no_grad; the first output of a tuple."""
    with nvcim.device_variation(model, cfg):
        nvcim.program_chip_(model, seed=seed)
        with torch.no_grad():
            out = model(*inputs)
    return out[0] if isinstance(out, tuple) else out


def _encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


CASES = {  # name: (model, inputs)
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, padding=2, stride=2, dilation=2), lambda: (torch.randn(3, 4, 17),)),
    "conv1d unbatched": (lambda: nn.Conv1d(4, 6, 3), lambda: (torch.randn(4, 17),)),
    "conv1d grouped circular": (lambda: nn.Conv1d(4, 8, 3, padding="same", groups=2, padding_mode="circular"),
                                lambda: (torch.randn(3, 4, 17),)),
    "depthwise": (lambda: nn.Conv2d(6, 6, 3, padding=1, groups=6), lambda: (torch.randn(2, 6, 8, 8),)),
    "grouped": (lambda: nn.Conv2d(6, 4, 3, padding=1, groups=2, stride=2), lambda: (torch.randn(2, 6, 8, 8),)),
    "self-attention": (lambda: nn.MultiheadAttention(8, 2, batch_first=True), lambda: (torch.randn(2, 5, 8),) * 3),
    "cross-attention kdim vdim": (lambda: nn.MultiheadAttention(8, 2, kdim=6, vdim=4, add_bias_kv=True),
                                  lambda: (torch.randn(5, 2, 8), torch.randn(7, 2, 6), torch.randn(7, 2, 4))),
    "encoder fast path": (_encoder, lambda: (torch.randn(2, 5, 8),)),
}


@pytest.mark.parametrize("name", CASES)
def test_b24_at_sigma0_is_the_quantized_model_and_small_b_is_not(name):
    torch.manual_seed(0)
    make, inputs = CASES[name]
    model, x = make().eval(), inputs()
    want = _run(model, x, DeviceConfig(sigma=0.0))
    got = _run(model, x, DeviceConfig(sigma=0.0, adc_bits=24, tile_rows=8))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    coarse = _run(model, x, DeviceConfig(sigma=0.0, adc_bits=4, tile_rows=8))
    assert (coarse - want).abs().max() > 1e-2 * want.abs().max()  # the converters act on every case
    assert not nvcim.noisy_parameters(model)


def _levels(model: nn.Module, name: str):
    """The programmed device levels of one noisy tensor (after program_chip_)."""
    return {p.name: p.control.programmed for p in nvcim.noisy_parameters(model)}[name]


def test_conv1d_is_a_height_one_conv2d_on_its_levels():
    torch.manual_seed(2)
    layer = nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2)
    cfg = DeviceConfig(sigma=0.2, adc_bits=5, tile_rows=4, input_bits=6)
    x = torch.randn(3, 4, 11)
    with nvcim.device_variation(layer, cfg):
        nvcim.program_chip_(layer, seed=3)
        with torch.no_grad():
            got = layer(x)
        chip = _levels(layer, "weight")
        g_pos, g_neg = (g.unsqueeze(-2) for g in chip.crossbars())  # [M/K, out, C/G, 1, k]
        want = sliced_conv2d(x.unsqueeze(2), g_pos, g_neg, chip.scale, cfg, AdcConfig.of(cfg), bias=layer.bias,
                             stride=(1, 2), padding=(0, 1), groups=2).squeeze(2)
    assert torch.equal(got, want)


def _attention_by_hand(query, key, value, heads, project_in, project_out):
    """Multi-head attention written out (sequence-first, no masks, no dropout): q, k, v from project_in (one per
    input), per head softmax(q kᵀ / √d) v, heads concatenated, then project_out."""
    q, k, v = project_in(query, 0), project_in(key, 1), project_in(value, 2)  # [L or S, N, E]
    e = q.shape[-1]
    d = e // heads
    out = torch.empty_like(q)
    for n in range(q.shape[1]):
        for h in range(heads):
            cut = slice(h * d, (h + 1) * d)
            scores = q[:, n, cut] @ k[:, n, cut].t() / math.sqrt(d)  # [L, S]
            out[:, n, cut] = scores.softmax(-1) @ v[:, n, cut]
    return project_out(out)


@pytest.mark.parametrize("same_input", [True, False])
def test_attention_projections_are_sliced_products_of_their_levels(same_input):
    """The packed [3E, E] crossbar gives q, k, v as its thirds, each read with its own input (self-attention: one
    read), and out_proj is a sliced product of its own levels; the attention between them is digital."""
    torch.manual_seed(4)
    attention = nn.MultiheadAttention(8, 2, dtype=torch.float64)
    nn.init.normal_(attention.in_proj_bias)
    cfg = DeviceConfig(sigma=0.2, adc_bits=4, tile_rows=4)
    adc = AdcConfig.of(cfg)
    query = torch.randn(5, 2, 8, dtype=torch.float64)
    key = query if same_input else torch.randn(6, 2, 8, dtype=torch.float64)
    with nvcim.device_variation(attention, cfg):
        nvcim.program_chip_(attention, seed=6)
        with torch.no_grad():
            got, _ = attention(query, key, key)
        chip_in, chip_out = _levels(attention, "in_proj_weight"), _levels(attention, "out_proj.weight")

    def project_in(x, i):
        y = sliced_linear(x, *chip_in.crossbars(), chip_in.scale, cfg, adc, bias=attention.in_proj_bias)
        return y[..., i * 8:(i + 1) * 8]

    def project_out(x):
        return sliced_linear(x, *chip_out.crossbars(), chip_out.scale, cfg, adc, bias=attention.out_proj.bias)

    with torch.no_grad():
        want = _attention_by_hand(query, key, key, 2, project_in, project_out)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cross", [False, True])
def test_one_input_given_twice_is_read_once_whatever_the_layout(cross):
    """batch_first self-attention read in_proj three times (each transposed input a new tensor), so q, k and v
    drew their own read noise and the same chip scored differently with batch_first=True (review finding); a
    memory given as key and value is one read too."""
    from nvcim.layers.coverage import read_counts

    torch.manual_seed(5)
    outs, reads = [], []
    x, memory = torch.randn(3, 5, 8), torch.randn(3, 7, 8)  # [N, L, E] (batch first)
    for batch_first in (False, True):
        torch.manual_seed(5)
        attention = nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()
        q, kv = (x, memory if cross else x) if batch_first else (x.transpose(0, 1), (memory if cross else x).transpose(0, 1))
        with nvcim.device_variation(attention, DeviceConfig(sigma=0.1, read_sigma=0.2, adc_bits=6, tile_rows=8)):
            nvcim.program_chip_(attention, seed=2)
            reads.append(read_counts(attention, q, kv if cross else q, kv if cross else q)["in_proj_weight"])
            with torch.no_grad():
                out = attention(q, kv if cross else q, kv if cross else q)[0]
        outs.append(out if batch_first else out.transpose(0, 1))
    assert reads == [2 if cross else 1] * 2
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-6)


def test_out_proj_alone_is_still_refused():
    """An attention's out_proj without the attention: its forward reads the weight directly, never out_proj's."""
    model = nn.Sequential(nn.MultiheadAttention(8, 2))
    with pytest.raises(ValueError, match=r"'0.out_proj' \(\w*Linear, read directly by its MultiheadAttention\)"):
        nvcim.apply_variation_(model, DeviceConfig(adc_bits=8), include=["0.out_proj"])
    nvcim.apply_variation_(model, DeviceConfig(adc_bits=8))  # with its attention: both run on the chip
    assert {p.name for p in nvcim.noisy_parameters(model)} == {"0.in_proj_weight", "0.out_proj.weight"}


class _TinyTransformer(nn.Module):
    """A token classifier: Conv1d stem, a Transformer encoder layer, mean pooling, Linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv1d(2, 8, 3, padding=1)
        self.encoder = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # x [N, 2, L]
        h = self.stem(x).transpose(1, 2)  # [N, L, 8]
        return self.head(self.encoder(h).mean(1))  # [N, 3]


def test_training_through_a_sliced_transformer_reaches_every_weight():
    torch.manual_seed(7)
    model = _TinyTransformer()
    nvcim.apply_variation_(model, DeviceConfig(sigma=0.1, adc_bits=5, tile_rows=8),
                           generator=torch.Generator().manual_seed(1))
    loss = nn.functional.cross_entropy(model(torch.randn(4, 2, 6)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    for p in nvcim.noisy_parameters(model):
        grad = getattr(p.module, p.attr).grad
        assert grad is not None and bool(grad.isfinite().all()) and bool(grad.abs().sum() > 0), p.name


def test_monte_carlo_of_a_sliced_transformer_is_deterministic_by_seed():
    torch.manual_seed(8)
    model = _TinyTransformer().eval()
    x = torch.randn(40, 2, 6)
    with torch.no_grad():
        y = model(x).argmax(1)
    cfg = DeviceConfig(sigma=0.1, adc_bits=6, tile_rows=8, read_sigma=0.01)
    a = monte_carlo_evaluate(model, (x, y), cfg, runs=2, seed=3)
    b = monte_carlo_evaluate(model, (x, y), cfg, runs=2, seed=3)
    assert a.path == "loop" and a.per_run_correct == b.per_run_correct
    ideal = monte_carlo_evaluate(model, (x, y), cfg.replace(adc_bits=24), runs=2, seed=3)
    plain = monte_carlo_evaluate(model, (x, y), cfg.replace(adc_bits=None, tile_rows=128), runs=2, seed=3)
    assert ideal.per_run_correct == plain.per_run_correct  # B = 24: the same chips as without converters


def test_calibrated_ranges_on_grouped_convolutions_and_attention():
    """adc_clip="calibrated": calibrate_adc_ measures every sliced layer of the chip (a depthwise conv, the packed
    in_proj read twice in one forward, out_proj), without the warning an uncalibrated chip gives, and a
    calibrated chip's output is closer to the quantized model's than full-scale converters' at the same bits."""
    import warnings

    torch.manual_seed(9)
    model = _ConvAttention().eval()
    x = torch.randn(30, 2, 5)
    want = _run(model, (x,), DeviceConfig(sigma=0.0))
    out = {}
    for clip in ("full_scale", "calibrated"):
        cfg = DeviceConfig(sigma=0.0, adc_bits=5, tile_rows=64, adc_clip=clip)
        with nvcim.device_variation(model, cfg), warnings.catch_warnings():
            warnings.simplefilter("error")  # an uncalibrated chip would warn
            nvcim.program_chip_(model, seed=1)
            if clip == "calibrated":
                nvcim.calibrate_adc_(model, x)
            with torch.no_grad():
                out[clip] = model(x)
    error = {clip: float((y - want).abs().mean()) for clip, y in out.items()}
    assert error["calibrated"] < 0.5 * error["full_scale"], error


class _ConvAttention(nn.Module):
    """A depthwise Conv1d, then attention over its output's positions: [N, 2, L] -> [L, N, 2]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 3, padding=1, groups=2)
        self.attention = nn.MultiheadAttention(2, 1)

    def forward(self, x):
        h = self.conv(x).permute(2, 0, 1)  # [L, N, 2]
        memory = h.flip(0)  # one tensor as key and value: in_proj read for the query and once for the memory
        return self.attention(h, memory, memory)[0]
