"""Model zoo: shapes, gradients, device variation on every layer, width multiplier, determinism."""

import pytest
import torch
from torch import nn

import nvcim
from nvcim.models import MODELS, create_model, list_models, register_model

ALL = list_models()
LAYERS = (nn.Conv2d, nn.Linear)


def _weights(model):
    return [m.weight for m in model.modules() if isinstance(m, LAYERS)]


def _n_weights(model):
    return sum(w.numel() for w in _weights(model))


# small widths keep the big models fast on CPU; the architecture is the same
SMALL = {"vgg8": 0.125, "resnet18": 0.125, "tiny": 1.0}


def test_registry():
    assert {"vgg8", "resnet18", "tiny"} <= set(ALL)
    assert ALL == sorted(MODELS)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_forward_shape_32(name, in_channels, num_classes):
    model = create_model(name, num_classes, in_channels, width=SMALL[name])
    out = model(torch.randn(2, in_channels, 32, 32))
    assert out.shape == (2, num_classes)
    assert model.nvcim_spec == dict(name=name, num_classes=num_classes, in_channels=in_channels,
                                    width=SMALL[name], image_size=32)


@pytest.mark.parametrize("name", ["vgg8", "resnet18"])
def test_forward_shape_64(name):
    model = create_model(name, 200, 3, width=SMALL[name], image_size=64)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 200)


@pytest.mark.parametrize("name", ALL)
def test_backward(name):
    model = create_model(name, 10, 3, width=SMALL[name])
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", ALL)
def test_variation_on_every_layer(name):
    model = create_model(name, 10, 1, width=SMALL[name])
    n_layers = sum(isinstance(m, LAYERS) for m in model.modules())
    nvcim.apply_variation_(model, nvcim.DeviceConfig(sigma=0.1))
    assert len(nvcim.noisy_modules(model)) == n_layers
    x = torch.randn(2, 1, 32, 32)
    model.eval()
    a, b = model(x), model(x)
    assert a.shape == (2, 10) and torch.isfinite(a).all()
    assert not torch.equal(a, b)  # fresh noise each forward
    model.train()
    model(x).sum().backward()
    assert all(w.grad is not None for w in _weights(model))


def test_tiny_has_grouped_conv():
    model = create_model("tiny", 10, 3)
    assert any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())


def test_vgg8_exact_weight_count():
    model = create_model("vgg8", 10, 3)
    convs = [c for c in model.modules() if isinstance(c, nn.Conv2d)]
    widths = [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
    assert [(c.in_channels, c.out_channels) for c in convs] == widths
    assert all(c.bias is None and c.kernel_size == (3, 3) for c in convs)
    conv_w = sum(i * o * 9 for i, o in widths)  # 4,499,136
    fc_w = 512 * 4 * 4 * 1024 + 1024 * 10  # 8,398,848
    assert conv_w == 4_499_136 and fc_w == 8_398_848
    assert _n_weights(model) == conv_w + fc_w == 12_897_984
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(8192, 1024), (1024, 10)]


def test_vgg8_width_quarter():
    model = create_model("vgg8", 10, 3, width=0.25)
    convs = [c.out_channels for c in model.modules() if isinstance(c, nn.Conv2d)]
    assert convs == [16, 32, 64, 64, 128, 128]
    fcs = [(f.in_features, f.out_features) for f in model.modules() if isinstance(f, nn.Linear)]
    assert fcs == [(2048, 256), (256, 10)]


def test_vgg8_64_input_fc():
    model = create_model("vgg8", 200, 3, width=0.125, image_size=64)
    assert model.classifier[0].in_features == 64 * 8 * 8


def test_resnet18_structure():
    model = create_model("resnet18", 10, 3)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.bias is None
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    shortcuts = [n for n, m in model.named_modules() if n.endswith("shortcut") and len(m) > 0]
    assert shortcuts == ["layer2.0.shortcut", "layer3.0.shortcut", "layer4.0.shortcut"]
    assert (model.fc.in_features, model.fc.out_features) == (512, 10)
    assert 11_000_000 < sum(p.numel() for p in model.parameters()) < 11_300_000  # 11.17 M


@pytest.mark.parametrize("name", ALL)
def test_width_reduces_params(name):
    with torch.device("meta"):
        full = sum(p.numel() for p in create_model(name, 10, 3).parameters())
        half = sum(p.numel() for p in create_model(name, 10, 3, width=0.5).parameters())
    assert half < full


@pytest.mark.parametrize("name", ALL)
def test_determinism(name):
    torch.manual_seed(123)
    a = create_model(name, 10, 3, width=SMALL[name]).state_dict()
    torch.manual_seed(123)
    b = create_model(name, 10, 3, width=SMALL[name]).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(124)
    c = create_model(name, 10, 3, width=SMALL[name]).state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_init():
    model = create_model("vgg8", 10, 3, width=0.25)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            assert torch.all(m.bias == 0)
            std = (2.0 / m.in_features) ** 0.5
            assert abs(m.weight.std().item() - std) < 0.2 * std
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        if isinstance(m, nn.Conv2d):
            std = (2.0 / (m.out_channels * 9)) ** 0.5
            assert abs(m.weight.std().item() - std) < 0.2 * std


def test_errors():
    with pytest.raises(ValueError, match="unknown model 'nope'.*resnet18.*tiny.*vgg8"):
        create_model("nope")
    for bad in (0, -1.0, float("nan"), "x"):
        with pytest.raises(ValueError, match="width"):
            create_model("tiny", width=bad)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("tiny", num_classes=0)
    with pytest.raises(ValueError, match="option"):
        create_model("tiny", depth=3)
    with pytest.raises(ValueError, match="image_size >= 8"):
        create_model("vgg8", image_size=4)


def test_register_custom():
    @register_model("_test_mlp")
    def _mlp(num_classes, in_channels, width, image_size, hidden=8):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, hidden), nn.ReLU(),
                             nn.Linear(hidden, num_classes))

    try:
        m = create_model("_test_mlp", 3, 1, image_size=4, hidden=5)
        assert m(torch.randn(2, 1, 4, 4)).shape == (2, 3)
        assert m.nvcim_spec["hidden"] == 5
    finally:
        MODELS.unregister("_test_mlp")


def test_a_builder_without_width_builds_at_width_1_and_refuses_another():
    # `nvcim train` always passes its width (1 by default): a user's builder without that parameter failed with
    # "does not fit dataset ...: got an unexpected keyword argument 'width'"
    @register_model("_test_nowidth")
    def _nowidth(num_classes, in_channels, image_size):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))

    try:
        m = create_model("_test_nowidth", 3, 1, width=1.0, image_size=4)
        assert m(torch.randn(2, 1, 4, 4)).shape == (2, 3) and "width" not in m.nvcim_spec
        with pytest.raises(ValueError, match="has no width parameter, so width=0.5 cannot be applied"):
            create_model("_test_nowidth", 3, 1, width=0.5, image_size=4)
    finally:
        MODELS.unregister("_test_nowidth")


def test_a_builder_taking_options_but_no_width_refuses_another_width_too():
    """A builder written from the README's signature with **options but no width took width=0.5 into its options
    unread: a full-width model recorded as width 0.5 in its checkpoint and sweep cells (new user's finding)."""
    @register_model("_test_nowidth_opts")
    def _nowidth(num_classes, in_channels, image_size, **options):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))

    try:
        with pytest.raises(ValueError, match="has no width parameter, so width=0.5 cannot be applied"):
            create_model("_test_nowidth_opts", 3, 1, width=0.5, image_size=4)
        m = create_model("_test_nowidth_opts", 3, 1, width=1.0, image_size=4)
        assert "width" not in m.nvcim_spec
    finally:
        MODELS.unregister("_test_nowidth_opts")
