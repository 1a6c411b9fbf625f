"""IBM's aihwkit, an optional extra (`pip install nvcim[aihwkit]`, or `bash scripts/install_aihwkit.sh` for CPU
torch): its inference noise models as nvcim device models, and nvcim models to and from aihwkit analog models.

    dev = aihwkit_device("aihwkit:pcm?prog_noise_scale=1.5&t_inference=3600")   # parsing needs no aihwkit
    res = dev.monte_carlo(model, (x, y), runs=200, seed=0)                      # an nvcim MCResult
    analog = to_analog(model, dev)              # aihwkit's convert_to_analog with dev's RPU config
    model = from_analog(analog)                 # aihwkit-trained weights back into the nvcim model (spec kept)

Device model spec: `aihwkit:KIND[?KEY=VALUE&...]`, KIND `pcm` (PCMLikeNoiseModel) or `reram`
(ReRamWan2022NoiseModel); KEYs: the noise model's own numeric parameters (pcm: prog_noise_scale,
read_noise_scale, drift_scale, g_max, t_read, t_0; reram: noise_scale, g_max), and
    t_inference    seconds between programming and inference (drift, 1/f read noise; default 1; reram: one of
                   1, 86400, 172800, the times its model was fitted at); `nvcim eval --time` sets it too
    tile           torch (TorchInferenceRPUConfig, default: every draw from torch's generator, so results are
                   reproducible from the seed and batch size) or rpucuda (InferenceRPUConfig, aihwkit's C++
                   simulator, whose forward noise comes from its own generator)
    compensation   global (GlobalDriftCompensation, default) or none
    io             default (aihwkit's default analog forward: DAC/ADC quantization, output noise drawn per
                   forward, so per batch) or perfect (exact matrix-vector products: only the weights' noise,
                   and results that do not depend on the batch size)

Monte Carlo: the model is converted once with `convert_to_analog`; chip r seeds torch with the nvcim run
seed (`nvcim.evaluate.run_seed(seed, r)`), redraws the programming noise with `program_analog_weights` and
drifts to t_inference with `drift_analog_weights`, then scores every image; the statistics, EKL and result
files are nvcim's (`MCResult`; `quantized_accuracy` is then the converted model before programming: aihwkit's
forward without weight noise). aihwkit itself is imported only when a function needs it.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import torch
from torch import nn

from nvcim.layers.handlers import FUSED_CONTAINERS, fastpath_disabled
from nvcim.layers.noise import digital_layers, selected_layers

# the exact module types aihwkit's convert_to_analog puts on analog tiles (its default conversion map matches the
# class itself, not subclasses: MultiheadAttention's out_proj, a Linear subclass, stays digital)
ANALOG_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

PREFIX = "aihwkit:"
INSTALL_HINT = "install it with `pip install 'nvcim[aihwkit]'` (CPU torch: `bash scripts/install_aihwkit.sh`)"
# kind -> (aihwkit noise model class, its numeric parameters, description)
KINDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "pcm": ("PCMLikeNoiseModel", ("prog_noise_scale", "read_noise_scale", "drift_scale", "g_max", "t_read", "t_0"),
            "aihwkit's PCM inference model (programming noise, drift, 1/f read noise; Nandakumar et al. 2019)"),
    "reram": ("ReRamWan2022NoiseModel", ("noise_scale", "g_max"),
              "aihwkit's ReRAM inference model (programming and long-term noise; Wan et al., Nature 2022)"),
}
RERAM_TIMES = (1.0, 86400.0, 172800.0)
CHOICES = {"tile": ("torch", "rpucuda"), "compensation": ("global", "none"), "io": ("default", "perfect")}
DEFAULT_TIME = 1.0


class AihwkitError(ValueError):
    """aihwkit is missing or a spec / model cannot be used with it; the message names the fix (one line)."""


def available() -> bool:
    """Whether aihwkit can be imported."""
    try:
        import aihwkit  # noqa: F401
    except ImportError:
        return False
    return True


def require():
    """The aihwkit package, or an AihwkitError saying how to install it."""
    try:
        import aihwkit
    except ImportError as exc:
        raise AihwkitError(f"aihwkit is not installed ({exc}): {INSTALL_HINT}") from None
    return aihwkit


def is_aihwkit_spec(spec: Any) -> bool:
    """Whether a device-model name is an aihwkit one (`aihwkit:KIND...`)."""
    return isinstance(spec, str) and spec.strip().startswith(PREFIX)


def list_aihwkit_models() -> list[tuple[str, str]]:
    """(name, description) of the aihwkit device models (listed whether or not aihwkit is installed)."""
    state = "" if available() else " [needs the aihwkit extra]"
    return [(f"{PREFIX}{k}", f"{d}{state}") for k, (_, _, d) in KINDS.items()]


@dataclass(frozen=True)
class AihwkitDevice:
    """An aihwkit inference device: noise model kind and parameters, inference time, tile and IO settings."""

    kind: str
    noise: dict = field(default_factory=dict)  # the noise model's keyword arguments
    t_inference: float = DEFAULT_TIME
    tile: str = "torch"
    compensation: str = "global"
    io: str = "default"

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.kind}"

    @property
    def spec(self) -> str:
        """The full spec, every setting written out (aihwkit_device(spec) gives this device again)."""
        options = {**{k: _exact(v) for k, v in sorted(self.noise.items())}, "t_inference": _exact(self.t_inference),
                   "tile": self.tile, "compensation": self.compensation, "io": self.io}
        return f"{self.name}?{urlencode(options)}"  # 1e+06's "+" escaped: parse_qsl reads it as a space

    @property
    def reproducible(self) -> bool:
        """Whether chips are reproducible from the seed: not with the C++ tile's default forward (its IO noise comes
        from a generator aihwkit 1.2 offers no way to seed)."""
        return self.tile == "torch" or self.io == "perfect"

    def to_dict(self) -> dict:
        """JSON-able description (the `device_config` of its results)."""
        return {"aihwkit": self.kind, "noise_model": KINDS[self.kind][0], "noise_options": dict(self.noise),
                "t_inference": self.t_inference, "tile": self.tile, "drift_compensation": self.compensation,
                "io": self.io, **({} if self.reproducible else {"reproducible_from_seed": False})}

    def noise_model(self):
        require()
        import aihwkit.inference

        return getattr(aihwkit.inference, KINDS[self.kind][0])(**self.noise)

    def rpu_config(self):
        """aihwkit's InferenceRPUConfig (tile rpucuda) or TorchInferenceRPUConfig (tile torch) for this device."""
        require()
        from aihwkit.inference import GlobalDriftCompensation
        from aihwkit.simulator.configs import InferenceRPUConfig, TorchInferenceRPUConfig

        cls = TorchInferenceRPUConfig if self.tile == "torch" else InferenceRPUConfig
        rpu = cls(noise_model=self.noise_model(),
                  drift_compensation=GlobalDriftCompensation() if self.compensation == "global" else None)
        if self.io == "perfect":
            rpu.forward.is_perfect = True
        return rpu

    def monte_carlo(self, model: nn.Module, data: Any, *, runs: int, seed: int, batch_size: int = 256,
                    progress: bool = False, baselines: bool = True):
        """nvcim's Monte Carlo statistics (an MCResult) of `model` on `data` under this device (module docstring)."""
        return aihwkit_monte_carlo(model, data, self, runs=runs, seed=seed, batch_size=batch_size, progress=progress,
                                   baselines=baselines)


def _exact(value: float) -> str:
    """The shortest text that reads back as exactly this number ("3600", "1.23456789", "1e+06")."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def _number(spec: str, key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise AihwkitError(f"device model {spec}: {key}={text!r} is not a number") from None
    if key in _POSITIVE and not (math.isfinite(value) and value > 0):  # divided by, or a conductance range
        raise AihwkitError(f"device model {spec}: {key}={text!r} is invalid: use a finite number > 0")
    if not math.isfinite(value) or value < 0:
        raise AihwkitError(f"device model {spec}: {key}={text!r} is invalid: use a finite number >= 0")
    return value


_POSITIVE = ("t_read", "t_0", "g_max")  # the noise models' parameters that must be > 0 (0 divides by zero)


def aihwkit_device(spec: str, *, t_inference: float | None = None) -> AihwkitDevice:
    """The AihwkitDevice named by `aihwkit:KIND[?KEY=VALUE&...]` (module docstring); `t_inference` (e.g. from
    `--time`) sets the inference time unless the spec gives one (giving both differently is an error)."""
    text = spec.strip() if isinstance(spec, str) else ""
    if not text.startswith(PREFIX):
        raise AihwkitError(f"device model {spec!r} is not an aihwkit one: write aihwkit:pcm or aihwkit:reram")
    kind, _, query = text[len(PREFIX):].partition("?")
    if kind not in KINDS:
        raise AihwkitError(f"device model {spec}: unknown aihwkit kind {kind!r}: use one of "
                           f"{', '.join(PREFIX + k for k in KINDS)}")
    try:
        pairs = parse_qsl(query.replace("+", "%2B"), keep_blank_values=True,  # 1e+06: a '+' is no space here
                          strict_parsing=bool(query))
    except ValueError:
        raise AihwkitError(f"device model {spec}: options must read KEY=VALUE&KEY=VALUE after '?'") from None
    params = KINDS[kind][1]
    noise: dict[str, float] = {}
    settings: dict[str, Any] = {}
    for key, value in pairs:
        if key in noise or key in settings:
            raise AihwkitError(f"device model {spec}: option {key!r} is given twice: give it once")
        if key in params:
            noise[key] = _number(spec, key, value)
        elif key == "t_inference":
            settings[key] = _number(spec, key, value)
        elif key in CHOICES:
            if value not in CHOICES[key]:
                raise AihwkitError(f"device model {spec}: {key}={value!r} is invalid: use one of {', '.join(CHOICES[key])}")
            settings[key] = value
        else:
            raise AihwkitError(f"device model {spec}: unknown option {key!r}: use {', '.join(params)}, t_inference, "
                               f"{', '.join(CHOICES)}")
    if t_inference is not None:
        t_inference = float(t_inference)
        if not math.isfinite(t_inference) or t_inference < 0:
            raise AihwkitError(f"--time {t_inference!r} is invalid: use seconds >= 0")
        if settings.get("t_inference", t_inference) != t_inference:
            raise AihwkitError(f"device model {spec} sets t_inference={settings['t_inference']:g} and --time "
                               f"{t_inference:g}: give the inference time once")
        settings["t_inference"] = t_inference
    device = AihwkitDevice(kind, noise, **settings)
    if kind == "reram" and device.t_inference not in RERAM_TIMES:
        raise AihwkitError(f"device model {spec}: aihwkit's ReRAM model is fitted at t_inference = 1, 86400 and "
                           f"172800 s only, not {device.t_inference:g}: use one of those")
    return device


def check_convertible(model: nn.Module, device: AihwkitDevice | None = None) -> None:
    """A one-line AihwkitError when aihwkit's conversion cannot run `model` as nvcim means it (checked without
    aihwkit, so a matrix says it before any cell; layers kept digital stay digital in both): layers nvcim varies
    that it would leave exact (attention projections, recurrent layers, transposed convolutions, subclasses of
    Linear / Conv), and what its analog convolutions lack (`_conv_problem`: groups, string padding, padding modes,
    a Conv1d / Conv3d's dilation, and on `device`'s torch tile any Conv1d / Conv3d); a layer registered under two
    names, which the conversion would make two independent tiles."""
    analog = analog_layers(model)  # what the conversion puts on tiles (layers kept digital stay digital there too)
    exact = [f"{n!r} ({type(m).__name__})" for n, m in selected_layers(model) if n not in analog]
    if exact:  # varied under nvcim's device models, exact under aihwkit's: a comparison of unequal chips
        raise AihwkitError(f"aihwkit's conversion puts only Linear and Conv1d/2d/3d layers (those exact types) on "
                           f"analog tiles and would leave {', '.join(exact[:3])}"
                           f"{f' and {len(exact) - 3} more' if len(exact) > 3 else ''} exact, which nvcim varies: "
                           "keep them digital (--digital-layers), so that both compute them exactly, or compare "
                           "under nvcim's device models only")
    grouped = [n for n, m in analog.items() if isinstance(m, nn.modules.conv._ConvNd) and m.groups != 1]
    if grouped:
        raise AihwkitError(f"aihwkit's analog convolutions support groups=1 only, and layer {grouped[0]!r} (of "
                           f"{len(grouped)}) is grouped: use a model without grouped convolutions (e.g. vgg8, resnet18)")
    for name, module in analog.items():
        problem = _conv_problem(module, device)
        if problem:
            raise AihwkitError(f"aihwkit cannot run layer {name!r} ({type(module).__name__}): {problem}")
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if type(module) in ANALOG_TYPES and not _kept_digital(name, digital_layers(model)):
            names.setdefault(id(module), []).append(name)
    shared = next((n for n in names.values() if len(n) > 1), None)
    if shared:  # convert_to_analog converts each container's child: one layer would become two unequal tiles
        raise AihwkitError(f"layer {shared[0]!r} is also registered as {shared[1]!r}: aihwkit's conversion would make "
                           "two independent analog tiles of it (two chips' noise for one crossbar, and a tie lost on "
                           "the way back): register it once, or compare under nvcim's device models")


def _conv_problem(module: nn.Module, device: AihwkitDevice | None) -> str | None:
    """What aihwkit 1.2's analog convolutions cannot do for this layer (None: nothing, or not a convolution)."""
    if not isinstance(module, nn.modules.conv._ConvNd):
        return None
    if isinstance(module.padding, str):
        return (f"padding={module.padding!r} is not supported by its analog convolutions: give the padding as "
                "numbers (e.g. padding=1 for a 3x3 'same')")
    if module.padding_mode != "zeros":
        return f"padding_mode={module.padding_mode!r}: its analog convolutions pad with zeros only"
    if not isinstance(module, nn.Conv2d) and any(d != 1 for d in module.dilation):
        return f"dilation={module.dilation}: its analog Conv1d / Conv3d support dilation 1 only"
    if not isinstance(module, nn.Conv2d) and device is not None and device.tile == "torch":
        return ("its analog Conv1d / Conv3d need indexed convolutions, which the torch tile lacks: add "
                "tile=rpucuda to the device model (aihwkit:pcm?tile=rpucuda)")
    return None


def _kept_digital(name: str, digital) -> bool:
    """Whether layer `name` is, or is inside, a layer kept digital (nvcim.keep_digital_)."""
    return any(name == d or name.startswith(d + ".") for d in digital)


def analog_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{name: layer} that aihwkit's conversion puts on analog tiles: Linear and Conv1d/2d/3d (those exact types), but
    not a layer kept digital (passed to the conversion as `exclude_modules`)."""
    digital = digital_layers(model)
    return {n: m for n, m in model.named_modules() if type(m) in ANALOG_TYPES and not _kept_digital(n, digital)}


def to_analog(model: nn.Module, device: AihwkitDevice | str | None = None, rpu_config=None) -> nn.Module:
    """An aihwkit analog copy of `model` (`convert_to_analog`, every Conv / Linear not kept digital on analog tiles)
    with the RPU config of `device` (an AihwkitDevice or spec; default aihwkit:pcm) or `rpu_config`; the model is
    unchanged.
    The root keeps the model's class (and `nvcim_spec`), so aihwkit's module-level functions apply to it."""
    if rpu_config is None:
        device = aihwkit_device(device or f"{PREFIX}pcm") if not isinstance(device, AihwkitDevice) else device
    check_convertible(model, device if rpu_config is None else None)
    require()
    from aihwkit.nn.conversion import convert_to_analog

    if rpu_config is None:
        rpu_config = device.rpu_config()
    # the model's own class stays the root (no AnalogWrapper subclass made on the fly): the analog model keeps
    # nvcim's state-dict names and pickles with torch.save like any module
    return convert_to_analog(model, rpu_config, ensure_analog_root=False,
                             exclude_modules=list(digital_layers(model)))  # digital there as in nvcim's models


def from_analog(analog: nn.Module, model_spec: dict | None = None) -> nn.Module:
    """The nvcim model holding an aihwkit analog model's weights (`convert_to_digital`), rebuilt with
    `create_model(**model_spec)` (default: the spec the analog model was converted from) and loaded strictly."""
    require()
    from aihwkit.nn.conversion import convert_to_digital

    from nvcim.models import create_model

    spec = model_spec or getattr(analog, "nvcim_spec", None)
    if not isinstance(spec, dict) or "name" not in spec:
        raise AihwkitError("the analog model carries no nvcim model spec (it was not converted from an nvcim model): "
                           "pass model_spec={'name': ..., 'num_classes': ..., 'in_channels': ..., 'width': ...}")
    digital = convert_to_digital(analog)
    state = {k: v for k, v in digital.state_dict().items() if isinstance(v, torch.Tensor)}
    model = create_model(**spec)
    tied: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        tied.setdefault(id(p), []).append(name)
    for names in (n for n in tied.values() if len(n) > 1):  # one tensor in the model, a copy per layer in aihwkit
        copies = [(n, state[n]) for n in names if n in state]
        differ = next(((a, b) for (a, x), (b, y) in zip(copies, copies[1:]) if not torch.equal(x, y)), None)
        if differ:  # loading both into the one tensor keeps the last: the other's training lost silently
            raise AihwkitError(f"{differ[0]!r} and {differ[1]!r} are one tied tensor in model {spec['name']!r}, but the "
                               "analog model holds two copies that differ (aihwkit trains each layer's own): untie "
                               "them in the model, or keep one of the layers digital in aihwkit")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise AihwkitError(f"the analog model's weights do not fit model spec {spec} "
                           f"({str(exc).splitlines()[0]}): pass the spec it was converted from") from None
    return model


def aihwkit_monte_carlo(model: nn.Module, data: Any, device: AihwkitDevice, *, runs: int, seed: int,
                        batch_size: int = 256, progress: bool = False, baselines: bool = True):
    """nvcim's MCResult of `model` on `data` over `runs` chips of the aihwkit `device` (module docstring). The
    caller's random stream is left as it was (the conversion and every chip draw from torch's generator), and fused
    Transformer paths are off (they would read the analog layers' weights, which aihwkit sets to None)."""
    with torch.random.fork_rng(devices=[]), fastpath_disabled():
        return _monte_carlo(model, data, device, runs=runs, seed=seed, batch_size=batch_size, progress=progress,
                            baselines=baselines)


def _monte_carlo(model: nn.Module, data: Any, device: AihwkitDevice, *, runs: int, seed: int, batch_size: int,
                 progress: bool, baselines: bool):
    require()
    from aihwkit.inference.utils import drift_analog_weights, program_analog_weights
    from tqdm.auto import tqdm

    from nvcim.data.batching import eval_mode, materialize
    from nvcim.evaluate.forward import Accumulator, count_correct
    from nvcim.evaluate.results import MCResult
    from nvcim.evaluate.sampler import run_seed
    from nvcim.evaluate.stats import summarize

    if runs < 1 or seed < 0 or batch_size < 1:
        raise ValueError(f"runs={runs}, seed={seed}, batch_size={batch_size}: need runs >= 1, seed >= 0, batch_size >= 1")
    t0 = time.perf_counter()
    batches = materialize(data, batch_size, torch.device("cpu"), torch.float32)
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).float().cpu()  # never change the caller's model
    n = sum(int(y.numel()) for _, y in batches)
    analog = to_analog(model, device).eval()
    with eval_mode(model):
        clean = count_correct(model, batches) if baselines else math.nan
        with torch.no_grad():
            out = model(batches[0][0][:1])
    classes = int(out.shape[-1])
    if not device.reproducible:
        warnings.warn(f"{device.name} with tile=rpucuda and io=default: aihwkit's C++ simulator draws its forward "
                      "noise from its own generator, which it offers no way to seed: these chips cannot be reproduced "
                      "from the seed (io=perfect or tile=torch can)", RuntimeWarning, stacklevel=2)
    torch.manual_seed(seed)  # aihwkit's analog forward may draw (its IO noise): the baseline too is reproducible
    quantized = count_correct(analog, batches) if baselines else math.nan  # before programming: no weight noise
    acc = Accumulator(runs)
    bar = tqdm(total=runs, desc=f"MC {device.name}", disable=not progress, leave=False)
    try:
        with torch.no_grad():
            for r in range(runs):
                torch.manual_seed(run_seed(seed, r))
                program_analog_weights(analog, None)  # a fresh chip: programming noise from the reference weights
                drift_analog_weights(analog, device.t_inference)
                for x, y in batches:
                    acc.add([r], analog(x).unsqueeze(0), y)  # [1, B, classes]
                bar.update(1)
    finally:
        bar.close()
    stats = summarize(acc.correct, n, float(acc.ekl_sum.sum()), int(acc.ekl_n.sum()))
    return MCResult(sigma=0.0, runs=runs, seed=seed, n_samples=n, clean_accuracy=100.0 * clean / n,
                    quantized_accuracy=100.0 * quantized / n, per_run_correct=[int(c) for c in acc.correct],
                    wall_time_s=time.perf_counter() - t0, path="aihwkit", device_config=device.to_dict(),
                    nonfinite_runs=int((acc.nonfinite > 0).sum()), num_classes=classes, **stats)


# export → import: how the model is deployed and on what data (not how it was trained: aihwkit may have retrained it)
CARRIED = ("data", "device", "digital_layers", "digital_layer_names")


def export_analog(ckpt, out, device: AihwkitDevice | str | None = None):
    """`nvcim export CKPT --aihwkit DEVICE --out FILE.pt`: the checkpoint's model as an aihwkit analog model
    (`to_analog`), saved whole with torch.save (load it with `torch.load(FILE, weights_only=False)`)."""
    import io

    from nvcim.io.checkpoint import load_checkpoint
    from nvcim.io.files import atomic_write_bytes

    require()
    device = device if isinstance(device, AihwkitDevice) else aihwkit_device(device or f"{PREFIX}pcm")
    if device.t_inference != DEFAULT_TIME:
        raise AihwkitError(f"t_inference={device.t_inference:g} is not part of an analog model (its RPU config): drop "
                           "it, and drift the loaded model with aihwkit's drift_analog_weights(model, t)")
    model, config = load_checkpoint(ckpt)
    analog = to_analog(model.float().eval(), device)
    # what `nvcim import` puts back in the checkpoint: the layers kept digital (attention), device, data
    analog.nvcim_checkpoint = {k: config[k] for k in CARRIED if config.get(k) is not None}
    fused = sorted({type(m).__name__ for m in model.modules() if isinstance(m, FUSED_CONTAINERS)})
    if fused:
        warnings.warn(f"the model holds {', '.join(fused)}, whose fused inference path (eval mode, no_grad) reads its "
                      "layers' weights directly, which aihwkit's analog layers set to None: evaluate the loaded model "
                      "with torch.backends.mha.set_fastpath_enabled(False)", UserWarning, stacklevel=2)
    buf = io.BytesIO()
    torch.save(analog, buf)
    return atomic_write_bytes(out, buf.getvalue())


def import_analog(path, out, model_spec: dict | None = None):
    """`nvcim import FILE.pt --out CKPT`: an nvcim checkpoint of the aihwkit analog model saved whole in FILE (e.g.
    trained with aihwkit after `export_analog`). Unpickling runs code from the file: import only files you trust."""
    from pathlib import Path

    from nvcim.io.checkpoint import replaceable_problem, save_checkpoint

    require()
    problem = replaceable_problem(out)
    if problem:
        raise AihwkitError(f"cannot write checkpoint {out}: {problem}")
    if not Path(path).is_file():
        raise AihwkitError(f"aihwkit model file {path} does not exist: give the file written by torch.save(analog_model)")
    try:
        analog = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # unpickling errors of every kind
        raise AihwkitError(f"aihwkit model file {path} cannot be read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): "
                           "give a file written by torch.save(analog_model)") from None
    if not isinstance(analog, nn.Module):
        raise AihwkitError(f"aihwkit model file {path} holds a {type(analog).__name__}, not a model: save the analog "
                           "model itself with torch.save(analog_model)")
    programmed = _unprogram(analog)
    if programmed:
        warnings.warn(f"aihwkit model file {path}: {programmed} analog tile(s) were programmed (program_analog_weights "
                      "/ drift_analog_weights ran before torch.save): importing their reference, trained weights, not "
                      "the one chip's programmed (and drifted) ones", UserWarning, stacklevel=2)
    model = from_analog(analog, model_spec)
    carried = getattr(analog, "nvcim_checkpoint", None)  # absent from files exported before 2026-12-05
    carried = {k: v for k, v in carried.items() if k in CARRIED} if isinstance(carried, dict) else {}
    if carried.get("digital_layer_names"):
        from nvcim.io.checkpoint import keep_recorded_digital_

        keep_recorded_digital_(model, carried)
    return save_checkpoint(out, model, model.nvcim_spec, imported_from={"aihwkit_model": str(path)}, **carried)


def _unprogram(analog: nn.Module) -> int:
    """Put every programmed analog tile of `analog` back to its reference (trained) weights, as aihwkit's next
    programming starts from them; returns how many tiles were programmed."""
    tiles = {id(t): t for m in analog.modules() if hasattr(m, "analog_tiles") for t in m.analog_tiles()}
    count = 0
    for tile in tiles.values():
        reference = getattr(tile, "reference_combined_weights", None)
        if getattr(tile, "programmed_weights", None) is not None and reference is not None:
            tile.tile.set_weights(reference)
            tile.programmed_weights = None
            count += 1
    return count
