"""Checks and machine settings that run before training: the device, malloc tuning, the output
directory, and whether the model fits the data set's images (all before any data are loaded)."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch.nn.parameter import is_lazy

from nvcim.core.config import DeviceConfig
from nvcim.io.checkpoint import is_checkpoint_dir, read_checkpoint_config, replaceable_problem
from nvcim.data import dataset_info
from nvcim.io.files import check_output_path
from nvcim.io.train_state import cause
from nvcim.layers.coverage import CoverageError, check_coverage, check_images
from nvcim.layers.noise import SelectionError, check_sliced_layers, device_variation, keep_digital_, selected_layers
from nvcim.methods import METHODS
from nvcim.models import BuilderError, create_model
from nvcim.train.config import TrainConfig


def resolve_device(name: str) -> torch.device:
    """"auto" → CUDA when available; "cuda" without CUDA is a one-line ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("TrainConfig.device='cuda' but CUDA is not available: use 'cpu' or 'auto'")
    return torch.device(name)


def tune_malloc() -> bool:
    """Make glibc malloc keep freed memory for reuse instead of returning it to the OS (Linux only).

    A CPU training step frees and re-allocates its activations every step; glibc serves large blocks
    with fresh mmap()s and trims the heap, so every step page-faults its whole activation memory
    again. For OVF at full VGG-8 width (batch 128, four live forward graphs) that is ~850k page
    faults and ~1.3 s of kernel time per 13 s step; with this tweak the faults vanish and the step is
    ~12% faster (noise injection is unaffected: its smaller working set is already reused).
    Process-wide (the peak heap stays reserved), so the `nvcim train` CLI calls it on CPU and the
    library's `train()` does not. Returns True when applied.
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    ok = mallopt(m_mmap_max, 0)  # large blocks from the heap too, so they can be reused
    ok &= mallopt(m_trim_threshold, 2**31 - 1)  # never shrink the heap
    return bool(ok)


def check_out_dir(out_dir, overwrite: bool, cfg: TrainConfig | None = None) -> Path:
    """Refuse, before any training, an output path that the final checkpoint write would refuse (a file,
    a non-empty directory that is not an nvcim checkpoint, a checkpoint holding other files too) or,
    unless `overwrite`, a checkpoint."""
    out = check_output_path(out_dir, "output", is_dir=True)  # a file, a parent that is a file, no permission
    problem = replaceable_problem(out)
    if problem:
        raise ValueError(f"output {out}: {problem}")
    if not overwrite and is_checkpoint_dir(out):
        if _same_training(out, cfg):  # e.g. a Ctrl-C just after the last write: nothing is left to resume
            raise ValueError(f"output {out} already holds this training's finished checkpoint (this command finished "
                             f"before): evaluate it (nvcim eval {out}), or pass --overwrite to train it again")
        raise ValueError(f"output {out} already holds a checkpoint: pass --overwrite or choose another path")
    return out


def _same_training(out: Path, cfg: TrainConfig | None) -> bool:
    """Whether checkpoint `out` records the training `cfg` describes (a finished run of the same command)."""
    if cfg is None:
        return False
    try:
        recorded = read_checkpoint_config(out).get("train")
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and recorded == json.loads(json.dumps(cfg.to_dict()))  # as it reads back


def check_model_fits_data(cfg: TrainConfig, test_devices: Sequence[DeviceConfig] = ()) -> None:
    """Raise a one-line ValueError unless cfg.model builds for cfg.dataset's images (channels, classes, size) and
    its layers left to vary can run the training device and `test_devices` (the ADC simulation runs the layer
    types of nvcim.layers.handlers.SLICED_LAYERS only); built on the meta device (no memory, no RNG use), so it runs before the data are loaded or
    downloaded."""
    info = dataset_info(cfg.dataset)  # an npz: file is read here (and checked)
    try:
        with torch.device("meta"):
            model = create_model(cfg.model, info.num_classes, info.in_channels, width=cfg.width,
                                 image_size=info.image_size)
    except BuilderError:  # the builder's signature or what it returns, not the data
        raise
    except (ValueError, TypeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "has no width parameter" in msg:  # the width asked for, not the data
            raise ValueError(msg) from None
        raise ValueError(f"model {cfg.model!r} does not fit dataset {cfg.dataset!r} ({info.in_channels} channels, "
                         f"{info.num_classes} classes, {info.image_size}x{info.image_size}): {msg}") from None
    try:
        METHODS.get(cfg.method).check_model(model)
    except ValueError as exc:
        raise ValueError(f"method {cfg.method!r} cannot train model {cfg.model!r}: {exc}") from None
    lazy = [f"{name!r} ({type(m).__name__})" for name, m in model.named_modules()
            if any(is_lazy(p) for p in m.parameters(recurse=False))]
    if lazy:  # shapes unknown until a forward: checkpoints, device draws and the optimizer need them when built
        raise ValueError(f"model {cfg.model!r} has lazy modules, whose weights have no shape until a forward: "
                         f"{', '.join(lazy[:3])}{', ...' if len(lazy) > 3 else ''}: give their input sizes "
                         "(e.g. nn.Linear(in_features, ...))")
    if cfg.digital_layers:  # each pattern names a layer; not every layer digital (the method would vary none)
        try:
            keep_digital_(model, cfg.digital_layers)
            selected_layers(model, strict=True)  # the layers left to vary: none is a SelectionError
        except SelectionError as exc:
            raise ValueError(f"model {cfg.model!r}: TrainConfig.digital_layers: {exc}") from None
    layers = selected_layers(model)
    try:
        for device in (cfg.device_cfg(), *test_devices):
            check_sliced_layers(layers, device, model)
    except ValueError as exc:
        raise ValueError(f"model {cfg.model!r}: {exc}") from None


def check_model_output(model: torch.nn.Module, x: torch.Tensor, num_classes: int, cfg: TrainConfig) -> None:
    """Raise a one-line ValueError unless `model` maps a batch of the data set's images x [B, C, H, W] to one tensor
    of logits [B, num_classes], in eval mode and in training mode (a model with auxiliary outputs while training,
    Inception-style, returns a tuple only then): a user's model returning a tuple or the wrong number of classes
    failed inside the loss with a traceback, as did a forward that raises on these images (`_forward`). Leaves no
    trace: the forwards run on a copy of the model (a training forward may move BatchNorm statistics, reassign buffers
    or count steps) without gradients, with the random number generators (dropout) forked; a model that cannot be
    copied is checked in eval mode only, in place."""
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        probe, modes = copy.deepcopy(model), (False, True)
    except Exception:  # noqa: BLE001 - any module deepcopy cannot handle: the eval-mode check alone, as before
        probe, modes = model, (False,)
    was_training = model.training
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            for training in modes:
                probe.train(training)  # (a user's train() override may return None)
                _check_logits(_forward(probe, x, training, cfg), training, x.shape[0], num_classes, cfg)
    finally:
        if probe is model:
            model.train(was_training)


def _forward(model: torch.nn.Module, x: torch.Tensor, training: bool, cfg: TrainConfig):
    """model(x), or a one-line ValueError naming the model, the batch and the error when its forward raises (a layer
    sized for other images: "mat1 and mat2 shapes cannot be multiplied", ...)."""
    try:
        return model(x)
    except (MemoryError, torch.cuda.OutOfMemoryError):  # the machine, not the model's shapes
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a user's forward raises on these images
        mode = " in training mode" if training else ""
        raise ValueError(f"model {cfg.model!r} fails on a {list(x.shape)} batch of dataset {cfg.dataset!r}{mode} "
                         f"({cause(exc, limit=200)}): make its forward take [batch, channels, height, width] images "
                         "(its builder gets in_channels and image_size)") from None


def check_layers_read(model: torch.nn.Module, x: torch.Tensor, cfg: TrainConfig) -> None:
    """Raise a one-line ValueError naming the layers whose weights `model` reads without calling the layer (e.g.
    F.linear(h, self.fc1.weight)) or never uses: their chip would never be read (the weights stay exact), and every
    Monte Carlo evaluation refuses such a model (nvcim.layers.coverage's CoverageError), the validation after the
    first epoch included. The check Monte Carlo runs (on x's first images, or all of x where those do not reach a
    routed branch; eval mode, no gradients, the training device), here before any training step, on a copy of the plain `model` (digital layers kept; a model that cannot
    be copied is left to Monte Carlo's check); the random number generators are forked."""
    if not selected_layers(model):
        return  # nothing to vary: the method says so
    try:
        probe = copy.deepcopy(model)
    except Exception:  # noqa: BLE001 - a model deepcopy cannot handle: not checked here (its variation's warnings
        return  # are said once per model, so a check on itself would hide them; Monte Carlo validation still checks)
    was_training, layers = probe.training, []
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # what training says itself (layers left exact, shared weights)
            with device_variation(probe, cfg.device_cfg()):
                probe.eval()
                try:
                    check_coverage(probe, check_images(probe, x))  # x's first images, or all where those miss a branch
                except CoverageError as exc:
                    layers = exc.layers or exc.tensors
                    if not layers:
                        raise
    finally:
        probe.train(was_training)
    if layers:
        names = ", ".join(repr(n) for n in layers)
        raise ValueError(f"model {cfg.model!r} reads the weights of layer(s) {names} without calling the layer (or "
                         "never uses it), so nvcim cannot put them on the chip: keep them digital (--digital-layers "
                         f"{','.join(layers)}, sweep [train] digital_layers, TrainConfig.digital_layers in Python) or "
                         "make the model call the layer")


def _check_logits(out, training: bool, batch: int, num_classes: int, cfg: TrainConfig) -> None:
    """`check_model_output` of one forward's output."""
    mode = " in training mode (e.g. auxiliary outputs)" if training else ""
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"model {cfg.model!r} returns a {type(out).__name__}{mode}, not a tensor of logits "
                         "[batch, classes]: make its forward return the logits alone")
    if tuple(out.shape) != (batch, num_classes):
        raise ValueError(f"model {cfg.model!r} returns shape {list(out.shape)}{mode} for {batch} images of dataset "
                         f"{cfg.dataset!r}: logits must be [batch, {num_classes}] ({num_classes} classes; a registered "
                         "builder gets num_classes)")