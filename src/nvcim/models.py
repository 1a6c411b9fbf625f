"""Model zoo (SPEC §5): VGG-8 and CIFAR-style ResNet-18 as in the authors' code, plus a tiny CNN.

    model = nvcim.models.create_model("vgg8", num_classes=10, in_channels=1)          # MNIST, 32x32
    model = create_model("resnet18", num_classes=200, in_channels=3, image_size=64)   # Tiny ImageNet
    model = create_model("vgg8", 10, 3, width=0.25)                                   # CPU-sized

Every model is a plain `nn.Module` of Conv2d / BatchNorm2d / Linear layers, so
`nvcim.apply_variation_` makes all of its Conv/Linear weights noisy and checkpoints stay plain.
`width` scales every hidden width (round, at least 1); `image_size` is the (square) input side the
model is built for (VGG-8's first FC layer depends on it; ResNet-18 works at any size >= 1).

The spec a model was built from is kept on it as `model.nvcim_spec` (a dict that
`create_model(**spec)` turns back into the same architecture); checkpoints store it.

A model may name its stages: `stages`, a tuple of submodule names (shallow to deep) whose outputs are
its successive intermediate representations (VGG-8: after block 1 and after each max-pool, where the
authors' IRS reads them; ResNet-18: layer1..layer4; tiny: after the pool and after the second block).
`model_stages(model)` returns them as modules; IRS (nvcim.methods.irs) places its auxiliary heads there.

New models: decorate a builder `fn(num_classes, in_channels, width, image_size, **options)` (a builder may leave out
`width`: it is then built as it is, and a width other than 1 is refused) with
`@register_model("name")`. `create_model` passes it only the arguments its caller gave, so the
builder's own defaults stand (and are recorded in `nvcim_spec`). A model above MAX_PARAMETERS
(counted on the meta device before anything is allocated) is refused with a ValueError; a builder that does not
take a standard argument its caller gives (`nvcim train` gives all four), or returns no nn.Module, with a
BuilderError (a ValueError naming the signature it needs).
"""

from __future__ import annotations

import decimal
import inspect
import math
import numbers
import warnings
from typing import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from nvcim.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str, *, replace: bool = False
                   ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register `fn(num_classes, in_channels, width, image_size, **options) -> nn.Module` (replace=True:
    shadow a model of that name on purpose)."""
    return MODELS.register(name, replace=replace)


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(MODELS)


def _positive_int(what: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what}={value!r} is invalid: use an integer >= 1")
    return value


def _standard_arg(key: str, value):
    """A validated num_classes / in_channels / image_size (integers >= 1) or width (a finite number > 0)."""
    if key != "width":
        return _positive_int(key, value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"width={value!r} is invalid: use a finite number > 0")
    return float(value)


BUILDER_SIGNATURE = "fn(num_classes, in_channels, width, image_size, **options) (width may be left out)"


class BuilderError(ValueError):
    """A registered builder nvcim cannot use as one (its signature, what it returns), whatever the data set."""


def _builder_name(builder) -> str:
    return getattr(builder, "__name__", type(builder).__name__)


# What `create_model` passes for a standard argument the caller left out and the builder requires
# (has no default of its own); a builder's own defaults always stand.
STANDARD_DEFAULTS = {"num_classes": 10, "in_channels": 1, "width": 1.0, "image_size": 32}

# Largest model `create_model` builds: 2e9 parameters (8 GB of float32 weights, ~150x VGG-8); a larger
# one is almost surely a typo (width=1000) that would exhaust memory. Raise it here for a bigger machine.
MAX_PARAMETERS = 2_000_000_000


def create_model(
    name: str,
    num_classes: int | None = None,
    in_channels: int | None = None,
    *,
    width: float | None = None,
    image_size: int | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model, freshly initialized (torch's global RNG; seed it for determinism).

    Only the arguments given reach the builder, so a registered builder's own defaults stand (e.g. a
    model built for 8x8 inputs); a standard argument the builder requires without a default gets
    STANDARD_DEFAULTS. The model is first built on the meta device (no memory, no RNG use) to count
    its parameters: more than MAX_PARAMETERS is a ValueError naming the size, before any allocation.
    """
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"unknown model {name!r}: use one of {list_models()}")
    given = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width),
                               ("image_size", image_size)) if v is not None}
    given = {k: _standard_arg(k, v) for k, v in given.items()}
    builder = MODELS[name]
    params = inspect.signature(builder).parameters
    if "width" in given and "width" not in params:  # a builder without a width (a user's own model); one taking
        if given["width"] != STANDARD_DEFAULTS["width"]:  # **options would drop it there unread, and say 0.5 wrongly
            raise ValueError(f"model {name!r} has no width parameter, so width={given['width']:g} cannot be "
                             "applied: use width 1 (drop --width, or a sweep spec's width) or add `width` to its "
                             "builder")
        del given["width"]  # width 1: the model as its builder makes it
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        untaken = [k for k in given if k not in params]  # nvcim always passes these: the builder must take them
        if untaken:
            shown = f"{_builder_name(builder)}{inspect.signature(builder)}"
            raise BuilderError(f"model {name!r}: its builder {shown} takes no {' or '.join(untaken)}: give it the "
                               f"signature {BUILDER_SIGNATURE}")
        allowed = [p for p in params if p not in STANDARD_DEFAULTS]
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise ValueError(f"model {name!r} has no option(s) {unknown}: its options are {allowed}")
    args = dict(given)
    spec = dict(given)
    for key, default in STANDARD_DEFAULTS.items():
        p = params.get(key)
        if key in given or p is None or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            args[key] = spec[key] = default  # required by the builder: nvcim's default
        else:
            spec[key] = p.default  # the builder's own default stands (recorded so the spec rebuilds it)
    _check_size(name, builder, args, kwargs)
    model = builder(**args, **kwargs)
    if not isinstance(model, nn.Module):
        raise BuilderError(f"model {name!r}: its builder {_builder_name(builder)} returned a {type(model).__name__}, "
                           "not an nn.Module: make it return the model")
    model.nvcim_spec = dict(name=name, **{k: spec[k] for k in STANDARD_DEFAULTS if k in spec}, **kwargs)
    return model


_META_FACTORIES = (torch.empty, torch.zeros, torch.ones, torch.rand, torch.randn, torch.full)


class _MetaSizeCount(TorchFunctionMode):
    """The mode of the size-counting meta build. `Tensor.normal_` on meta tensors is a no-op (its meta kernel
    costs ~1 s of imports on first use, and a meta build only needs the shapes). A factory call (torch.empty,
    zeros, ...) asking for more than `limit` elements gets an empty meta tensor instead, its size added (as a
    Python int, which cannot overflow) to `skipped`: torch cannot even describe a tensor above 2**63 bytes
    (a storage-size overflow), so counting on the meta device alone would let an absurd width through."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.skipped = limit, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.normal_ and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        if func in _META_FACTORIES:
            size, rest, in_kwargs = _factory_size(func, args, kwargs)
            if size is not None and math.prod(size) > self.limit:
                self.skipped += math.prod(size)
                empty = (0,) * len(size)
                if in_kwargs:
                    return func(*rest, **{**kwargs, "size": empty})
                return func(empty, *rest, **kwargs)
        return func(*args, **kwargs)


def _factory_size(func, args, kwargs):
    """(size as a tuple of ints, the other positional args, whether size was a keyword) of a factory call,
    or (None, ...) when it is not plain ints."""
    if "size" in kwargs:
        size, rest, in_kwargs = kwargs["size"], args, True
    elif func is torch.full:
        if not args:
            return None, args, False
        size, rest, in_kwargs = args[0], args[1:], False
    elif len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
        size, rest, in_kwargs = args[0], (), False
    else:
        size, rest, in_kwargs = args, (), False
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (size,)
    if (not isinstance(size, (tuple, list, torch.Size))
            or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in size)):
        return None, args, False
    return tuple(int(d) for d in size), rest, in_kwargs


def _is_overflow(exc: BaseException) -> bool:
    """An error of a size beyond what torch or Python can hold (storage size, int64, float -> int)."""
    return isinstance(exc, OverflowError) or (
        isinstance(exc, (RuntimeError, TypeError)) and "overflow" in str(exc).lower())


def _g(x: int) -> str:
    """x formatted as '.3g': a float where it fits, else a Decimal (an int past 1e308 has no float)."""
    try:
        return f"{float(x):.3g}"
    except OverflowError:
        return f"{decimal.Decimal(x):.3g}"


def _parameters_and_gb(n: int) -> str:
    """'1.29e+13 parameters (5.15e+04 GB as float32)', for any int n."""
    return f"{_g(n)} parameters ({_g(4 * n // 10**9) if n > 10**300 else f'{4 * n / 1e9:.3g}'} GB as float32)"


def _check_size(name: str, builder: Callable[..., nn.Module], args: dict, kwargs: dict) -> None:
    """Refuse a model above MAX_PARAMETERS, counted on a meta-device build (no memory, no RNG use): a tensor
    above the cap is not even made (its size is counted as a Python int), and a build that overflows (a size
    torch or Python cannot hold) is too large too; never lets an absurd size through to a real allocation."""
    limit = MAX_PARAMETERS
    mode = _MetaSizeCount(limit)
    try:
        with torch.device("meta"), mode, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Initializing zero-element tensors is a no-op"
            n = sum(p.numel() for p in builder(**args, **kwargs).parameters()) + mode.skipped
        size = _parameters_and_gb(n)
    except Exception as exc:
        if mode.skipped:  # failed after a tensor above the cap was asked for: too large whatever the rest
            n = mode.skipped
            size = "at least " + _parameters_and_gb(n)
        elif _is_overflow(exc):
            n = math.inf
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            size = f"more parameters than can be counted ({first[:100]})"
        else:
            return  # a builder that cannot run on the meta device: its real build reports its own errors
    if n > limit:
        shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in args.items())
        raise ValueError(
            f"model {name!r} ({shown}) would have {size}, above "
            f"nvcim.models.MAX_PARAMETERS={limit:.3g}: use a smaller width, image_size or num_classes"
        )


def model_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's named stages as (name, module), shallow to deep; a one-line ValueError when it names none."""
    names = getattr(model, "stages", None)
    what = (getattr(model, "nvcim_spec", None) or {}).get("name") or type(model).__name__
    if not names or isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"model {what!r} names no stages: give its class a `stages` tuple of submodule names "
                         "(shallow to deep) whose outputs are intermediate representations")
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"model {what!r}: stages {missing} are not submodules of it: fix its `stages`")
    return [(n, modules[n]) for n in names]


def scaled(channels: int, width: float) -> int:
    """A width-scaled channel count: round(channels * width), at least 1."""
    return max(1, int(round(channels * width)))


def init_weights_(model: nn.Module) -> nn.Module:
    """Kaiming-normal init: convs fan_out/relu (like torchvision), linears fan_in/relu with zero bias;
    BatchNorm weight 1, bias 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    return model


def _conv_bn_relu(cin: int, cout: int, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False, groups=groups), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


# ---- VGG-8 -----------------------------------------------------------------------------------
VGG8_CFG = (64, 128, "M", 256, 256, "M", 512, 512, "M")


class VGG8(nn.Module):
    """features: 6x (conv3x3 no bias + BN + ReLU) with 3 max-pools; classifier: FC -> ReLU -> FC.

    Shapes at width 1, 32x32 input: [B,C,32,32] -> [B,128,32,32] -> pool [B,128,16,16]
    -> [B,256,16,16] -> pool [B,256,8,8] -> [B,512,8,8] -> pool [B,512,4,4] -> flatten [B,8192]
    -> [B,1024] -> [B,classes].
    """

    def __init__(self, num_classes: int, in_channels: int, width: float, image_size: int):
        super().__init__()
        if image_size < 8:
            raise ValueError(f"vgg8 needs image_size >= 8 (three 2x2 max-pools), got {image_size}")
        layers: list[nn.Module] = []
        stages: list[str] = []  # after block 1 and after each pool (the authors' IRS taps)
        c, side = in_channels, image_size
        for v in VGG8_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                side //= 2
            else:
                out = scaled(v, width)
                layers += _conv_bn_relu(c, out)
                c = out
            if v == "M" or not stages:
                stages.append(f"features.{len(layers) - 1}")
        self.stages = tuple(stages)  # features.2, .6, .13, .20
        self.features = nn.Sequential(*layers)
        hidden = scaled(1024, width)
        self.flat_features = c * side * side  # 512 * 4 * 4 = 8192 at width 1, 32x32
        self.classifier = nn.Sequential(
            nn.Linear(self.flat_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )
        init_weights_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # [B, c, side, side]
        return self.classifier(torch.flatten(x, 1))  # [B, c*side*side] -> [B, classes]


@register_model("vgg8")
def vgg8(num_classes: int = 10, in_channels: int = 1, width: float = 1.0, image_size: int = 32) -> nn.Module:
    return VGG8(num_classes, in_channels, width, image_size)


# ---- ResNet-18 (CIFAR style) -----------------------------------------------------------------
class BasicBlock(nn.Module):
    """conv3x3(stride) BN ReLU conv3x3 BN, plus identity or 1x1 conv + BN shortcut; ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """Stages: layer1..layer4. Shapes at width 1, 32x32 input: stem [B,64,32,32] -> layer1 [B,64,32,32] -> layer2 [B,128,16,16]
    -> layer3 [B,256,8,8] -> layer4 [B,512,4,4] -> avg pool [B,512] -> [B,classes] (64x64: sides doubled)."""

    def __init__(self, num_classes: int, in_channels: int, width: float, image_size: int):
        super().__init__()
        widths = [scaled(w, width) for w in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        c = widths[0]
        stages = []
        for w, stride in zip(widths, (1, 2, 2, 2)):
            stages.append(nn.Sequential(BasicBlock(c, w, stride), BasicBlock(w, w, 1)))
            c = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.stages = ("layer1", "layer2", "layer3", "layer4")
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        init_weights_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # [B, 64w, H, W]
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [B, 512w, H/8, W/8]
        return self.fc(torch.flatten(self.avgpool(x), 1))  # [B, 512w] -> [B, classes]


@register_model("resnet18")
def resnet18(num_classes: int = 10, in_channels: int = 1, width: float = 1.0, image_size: int = 32) -> nn.Module:
    return ResNet18(num_classes, in_channels, width, image_size)


# ---- tiny CNN for tests ------------------------------------------------------------------------
class TinyCNN(nn.Module):
    """conv3x3 -> BN -> ReLU -> pool -> grouped conv3x3 (2 groups) -> BN -> ReLU -> global avg pool -> FC.

    Widths 8, 16 at width 1 (kept even so the grouped conv has 2 groups). [B,C,H,W] -> [B,8,H,W]
    -> [B,8,H/2,W/2] -> [B,16,H/2,W/2] -> [B,16] -> [B,classes].
    """

    def __init__(self, num_classes: int, in_channels: int, width: float, image_size: int):
        super().__init__()
        c1, c2 = 2 * scaled(4, width), 2 * scaled(8, width)
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, c1),
            nn.MaxPool2d(2, 2) if image_size >= 2 else nn.Identity(),
            *_conv_bn_relu(c1, c2, groups=2),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(c2, num_classes)
        self.stages = ("features.3", "features.6")  # after the pool, after the second block
        init_weights_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model("tiny")
def tiny(num_classes: int = 10, in_channels: int = 1, width: float = 1.0, image_size: int = 32) -> nn.Module:
    return TinyCNN(num_classes, in_channels, width, image_size)
