"""Training loop for every method (SPEC §3, §5): config, presets, validation under noise, checkpoints.

    cfg = TrainConfig(model="vgg8", width=0.25, dataset="mnist5k", method="ovf",
                      method_params={"beta": 1e-3}, sigma=0.3, epochs=3)
    result = train(cfg, out_dir="runs/ovf-0.3")     # TrainResult(status, model, metrics, checkpoint)
    cfg = load_train_config("exp.toml", epochs=5)  # TOML / YAML / JSON file, keyword overrides win
    cfg = preset_config("cpu-quick", method="vanilla")

One run:
  * seeds: `torch.manual_seed(seed)` before the model is built (init and training noise come from the
    global RNG); a separate CPU `torch.Generator(seed)` drives shuffling and augmentation. The
    train/val split is drawn with `data_seed` (default 0, independent of `seed`, so every compared
    model sees the same validation and test sets).
  * the method's task (nvcim.methods.create_task) owns the noise hooks during training; the loss of
    each step is `task(x, y)`, then backward and one optimizer step. The LR schedule (cosine
    annealing to 0 over all training steps, or constant) is stepped once per optimizer step.
  * after every `eval_every` epochs (and after the last): Monte Carlo validation accuracy under
    device variation at the training σ (`val_runs` chips, fixed seed VAL_MC_SEED, so epochs are
    compared on the same chips) and clean validation accuracy. The best state (`select`: by noisy
    validation mean by default; by clean accuracy; or the last epoch; always the last evaluated
    epoch when there is no val split) is kept in memory (a copy of the state dict) and restored at
    the end. Ties keep the earlier epoch.
  * end: `task.finish()` (plain backbone), clean test accuracy and a quick Monte Carlo test accuracy
    at the training σ (`val_runs` chips, seed TEST_MC_SEED; the full evaluation is `nvcim eval`),
    and, with `out_dir`, one atomic checkpoint (nvcim.checkpoint.save_checkpoint).

Divergence: a non-finite loss stops the run; `train()` does not raise. The result has status
"diverged" and metrics["diverged_at"] = {"epoch", "step"} (1-based epoch; step counted from 1
inside that epoch; detection is batched, so `step` is the first bad step exactly, found on tensor).
So do non-finite weights or BatchNorm statistics after an epoch, and non-finite clean logits on the
validation split (checked at every validation) or on the test split (checked at the end, with the
weights kept): finite weights can still overflow. Then `step` is the epoch's last step (for the test
split: of the epoch whose weights were kept); metrics["diverged_reason"] says which check failed
(REASON_*; None when ok). The weights restored are the best validated state so far, or, when no epoch
was validated yet, the initial weights (always finite); a checkpoint IS written in both cases, with
metrics["status"] = "diverged" and metrics["best_epoch"] = None in the second case, so a sweep
records the failure next to the successes and nothing NaN is ever saved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from nvcim.fileio import read_mapping_file

import torch
from torch import nn

from nvcim.config import DeviceConfig

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")
DEVICES = ("cpu", "cuda", "auto")
SELECTIONS = ("noisy", "clean", "last")
VAL_MC_SEED = 1  # Monte Carlo seed of every validation (same chips every epoch)
TEST_MC_SEED = 0  # Monte Carlo seed of the quick test evaluation (= the first chips of `nvcim eval --seed 0`)
BAR_EVERY = 10  # steps between progress-bar refreshes (each one is a host sync on CUDA)

STATUS_OK = "ok"
STATUS_DIVERGED = "diverged"
# metrics["diverged_reason"]: what was non-finite
REASON_LOSS = "non-finite loss"
REASON_STATE = "non-finite weights or BatchNorm statistics"
REASON_VAL = "non-finite outputs on the validation split"
REASON_TEST = "non-finite outputs on the test split"


# ---- config --------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on (validated; one-line ValueError naming the field).

    model, width: a registered model (nvcim.models.list_models()) and its width multiplier (> 0).
    dataset, data_root, val_fraction, limit, data_seed: passed to nvcim.data.load_dataset
        (limit caps train, val and test at their first `limit` examples; data_seed draws the split).
    method, method_params: a method of nvcim.methods.METHODS and its hyper-parameters
        (e.g. {"beta": 1e-3, "n_variational": 3} for OVF).
    sigma: training σ_d (for vanilla: the σ validation is run at). weight_bits, device_bits,
        quantize: the rest of the DeviceConfig.
    epochs, batch_size, optimizer ("adam" | "sgd"), lr, momentum (SGD only), weight_decay,
        schedule ("cosine" annealing to 0 over the run, stepped per step | "constant").
    seed: global torch seed (init, training noise) and seed of the shuffling/augmentation generator.
    device: "cpu" | "cuda" | "auto" (CUDA when available). amp: bf16 autocast, CUDA only (ignored
        with a warning on CPU).
    augment: the data set's training augmentation (None: the data set's default).
    val_runs: Monte Carlo chips per validation and for the quick test (0: no Monte Carlo at all).
    select: which evaluated epoch's state is kept: "noisy" (best Monte Carlo validation mean at the
        training σ; the paper's criterion), "clean" (best clean validation accuracy; e.g. for a vanilla
        baseline at a σ where it is at chance), "last".
    eval_every: validate every this many epochs (and always after the last).
    num_threads: torch.set_num_threads for the run (None: leave torch's setting).
    progress: tqdm bar (only when stderr is a TTY) and one line per epoch on stderr.
    """

    model: str = "vgg8"
    width: float = 1.0
    dataset: str = "mnist5k"
    data_root: str | None = None
    val_fraction: float = 0.1
    limit: int | None = None
    data_seed: int = 0
    method: str = "ovf"
    method_params: Mapping[str, Any] = field(default_factory=dict)
    sigma: float = 0.3
    weight_bits: int = 8
    device_bits: int = 2
    quantize: bool = True
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    augment: bool | None = None
    val_runs: int = 8
    select: str = "noisy"
    eval_every: int = 1
    num_threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        from nvcim.data import DATASETS
        from nvcim.models import list_models

        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is invalid: use {allowed}")

        if not isinstance(self.model, str) or self.model not in list_models():
            raise bad("model", f"one of {list_models()}")
        if not _is_number(self.width) or self.width <= 0:
            raise bad("width", "a finite number > 0")
        object.__setattr__(self, "width", float(self.width))
        if not isinstance(self.dataset, str) or self.dataset not in DATASETS:
            raise bad("dataset", f"one of {list(DATASETS)}")
        if self.data_root is not None:
            if not isinstance(self.data_root, (str, Path)):
                raise bad("data_root", "a directory path or None")
            object.__setattr__(self, "data_root", str(self.data_root))
        if not _is_number(self.val_fraction) or not 0 <= self.val_fraction < 1:
            raise bad("val_fraction", "a number in [0, 1)")
        object.__setattr__(self, "val_fraction", float(self.val_fraction))
        if self.limit is not None and (not _is_int(self.limit) or self.limit < 1):
            raise bad("limit", "an integer >= 1 or None")
        for name in ("data_seed", "seed"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "an integer >= 0")
        if not isinstance(self.method_params, Mapping):
            raise bad("method_params", "a mapping of method hyper-parameters, e.g. {'beta': 0.001}")
        object.__setattr__(self, "method_params", dict(self.method_params))
        self.method_cfg()  # unknown method / parameter / bad value: one-line ValueError from nvcim.methods
        if not _is_number(self.sigma) or self.sigma < 0:
            raise bad("sigma", "a finite number >= 0 (σ_d relative to one device's maximum level)")
        for name in ("weight_bits", "device_bits"):
            if not _is_int(getattr(self, name)):
                raise bad(name, "an integer in 1..16")
        if not isinstance(self.quantize, bool):
            raise bad("quantize", "True or False")
        self.device_cfg()  # bits / divisibility checks of DeviceConfig
        object.__setattr__(self, "sigma", float(self.sigma))
        for name in ("epochs", "batch_size", "eval_every"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"one of {list(OPTIMIZERS)}")
        if not _is_number(self.lr) or self.lr <= 0:
            raise bad("lr", "a finite number > 0")
        for name in ("momentum", "weight_decay"):
            if not _is_number(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "a finite number >= 0")
        for name in ("lr", "momentum", "weight_decay"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"one of {list(SCHEDULES)}")
        if self.device not in DEVICES:
            raise bad("device", f"one of {list(DEVICES)}")
        for name in ("amp", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "True or False")
        if self.augment is not None and not isinstance(self.augment, bool):
            raise bad("augment", "True, False or None (the data set's default)")
        if not _is_int(self.val_runs) or self.val_runs < 0:
            raise bad("val_runs", "an integer >= 0 (0: no Monte Carlo validation)")
        if self.select not in SELECTIONS:
            raise bad("select", f"one of {list(SELECTIONS)}")
        if self.select == "noisy" and self.val_runs == 0:
            raise ValueError("TrainConfig.select='noisy' needs val_runs >= 1: raise val_runs or use select='clean'/'last'")
        if self.num_threads is not None and (not _is_int(self.num_threads) or self.num_threads < 1):
            raise bad("num_threads", "an integer >= 1 or None")

    # ---- derived -------------------------------------------------------------------------------
    def device_cfg(self, sigma: float | None = None) -> DeviceConfig:
        """The DeviceConfig of this run (at the training σ unless `sigma` is given)."""
        return DeviceConfig(
            weight_bits=self.weight_bits,
            device_bits=self.device_bits,
            sigma=self.sigma if sigma is None else sigma,
            quantize=self.quantize,
        )

    def method_cfg(self):
        """The validated method config (nvcim.methods.method_config)."""
        from nvcim.methods import method_config

        return method_config(self.method, **self.method_params)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated again)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["method_params"] = dict(self.method_params)
        if isinstance(d["method_params"].get("gammas"), tuple):
            d["method_params"]["gammas"] = list(d["method_params"]["gammas"])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Build from a dict of fields; unknown keys give a one-line ValueError listing the allowed ones."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a training config must be a mapping of fields, got {type(d).__name__}")
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise ValueError(f"unknown training config key(s) {unknown}: allowed keys are {allowed}")
        return cls(**dict(d))


FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
DEFAULTS = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory()) for f in dataclasses.fields(TrainConfig)}

# Named overrides of the defaults. "reference-*" are the paper's recipe (SPEC §5).
PRESETS: dict[str, dict[str, Any]] = {
    "reference-vgg8": dict(model="vgg8", width=1.0, epochs=200, batch_size=128, optimizer="adam", lr=1e-3,
                           schedule="cosine", weight_decay=0.0),
    "reference-resnet18": dict(model="resnet18", width=1.0, epochs=200, batch_size=128, optimizer="adam", lr=1e-2,
                               schedule="cosine", weight_decay=0.0),
    "cpu-quick": dict(model="vgg8", width=0.25, dataset="mnist5k", epochs=3, batch_size=128, optimizer="adam",
                      lr=1e-3, schedule="cosine"),
    "smoke": dict(model="tiny", width=1.0, dataset="mnist5k", epochs=1, limit=256, batch_size=64, val_runs=2),
}


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    """TrainConfig from preset `name` with keyword overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: use one of {sorted(PRESETS)}")
    return TrainConfig.from_dict({**PRESETS[name], **overrides})


def read_config_file(path) -> dict:
    """The field dict of a TOML (.toml), YAML (.yaml/.yml) or JSON (.json) file.

    The file holds TrainConfig fields at top level (method hyper-parameters under `method_params`);
    an optional `preset` key expands to that preset's values, which the file's own values override.
    """
    path = Path(path)
    data = read_mapping_file(path, "config file")
    data = dict(data)
    preset = data.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"config file {path}: unknown preset {preset!r}: use one of {sorted(PRESETS)}")
        data = {**PRESETS[preset], **data}
    return data


def load_train_config(path, **overrides: Any) -> TrainConfig:
    """TrainConfig from a TOML / YAML / JSON file; keyword overrides replace file values."""
    return TrainConfig.from_dict({**read_config_file(path), **overrides})


# ---- result --------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """status: "ok" or "diverged"; model: the plain backbone (best state restored, no noise hooks);
    metrics: what config.json stores under "metrics"; checkpoint: its directory, or None."""

    status: str
    model: nn.Module
    metrics: dict
    checkpoint: Path | None
    config: TrainConfig


# ---- helpers -------------------------------------------------------------------------------------
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


def check_out_dir(out_dir, overwrite: bool) -> Path:
    """Refuse, before any training, an output path that the final checkpoint write would refuse (a file,
    a non-empty directory that is not an nvcim checkpoint, a checkpoint holding other files too) or,
    unless `overwrite`, a checkpoint."""
    from nvcim.checkpoint import is_checkpoint_dir, replaceable_problem
    from nvcim.fileio import check_output_path

    out = check_output_path(out_dir, "output", is_dir=True)  # a file, a parent that is a file, no permission
    problem = replaceable_problem(out)
    if problem:
        raise ValueError(f"output {out}: {problem}")
    if not overwrite and is_checkpoint_dir(out):
        raise ValueError(f"output {out} already holds a checkpoint: pass --overwrite or choose another path")
    return out


def check_model_fits_data(cfg: TrainConfig) -> None:
    """Raise a one-line ValueError unless cfg.model builds for cfg.dataset's images (channels, classes, size);
    built on the meta device (no memory, no RNG use), so it runs before the data are loaded or downloaded."""
    from nvcim.data import DATASETS
    from nvcim.models import create_model

    info = DATASETS[cfg.dataset]
    try:
        with torch.device("meta"):
            create_model(cfg.model, info.num_classes, info.in_channels, width=cfg.width, image_size=info.image_size)
    except (ValueError, TypeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"model {cfg.model!r} does not fit dataset {cfg.dataset!r} ({info.in_channels} channels, "
                         f"{info.num_classes} classes, {info.image_size}x{info.image_size}): {msg}") from None


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _clean_pass(model: nn.Module, split, batch_size: int, device: torch.device) -> tuple[float, bool]:
    """(top-1 accuracy in %, whether every logit was finite) of the float weights, eval mode, noise hooks
    (if any) disabled. A row with a NaN / inf logit predicts nothing (as in nvcim.evaluate)."""
    from nvcim.noise import variation_disabled

    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    finite = torch.ones((), dtype=torch.bool, device=device)
    n = 0
    try:
        with torch.no_grad(), variation_disabled(model):
            for x, y in split.batches(batch_size, device=device):
                out = model(x)  # x [B,C,H,W] -> logits [B,classes]
                ok = torch.isfinite(out).all(1)  # [B]
                correct += ((out.argmax(1) == y) & ok).sum()
                finite &= ok.all()
                n += int(y.numel())
    finally:
        model.train(was_training)
    return 100.0 * int(correct) / max(n, 1), bool(finite)


def _mc(model: nn.Module, split, cfg: TrainConfig, runs: int, seed: int, device: torch.device):
    """Monte Carlo accuracy at the training σ; the clean accuracy comes from _clean_pass, not from here."""
    from nvcim.evaluate import monte_carlo_evaluate

    return monte_carlo_evaluate(model, split, cfg.device_cfg(), runs=runs, seed=seed, batch_size=1024, device=device,
                                baselines=False)


class _Silent:
    """Stand-in for a tqdm bar when progress is off."""

    def update(self, n=1):
        pass

    def set_postfix_str(self, s, refresh=True):
        pass

    def close(self):
        pass


def _say(cfg: TrainConfig, msg: str) -> None:
    if cfg.progress:
        from tqdm.auto import tqdm

        tqdm.write(msg, file=sys.stderr)


# ---- training --------------------------------------------------------------------------------------
def train(cfg: TrainConfig, out_dir=None, *, overwrite: bool = True, splits=None) -> TrainResult:
    """Train one model as `cfg` says; returns a TrainResult and never raises on divergence.

    out_dir: write the checkpoint there at the end (atomically). An existing checkpoint there is
    replaced when `overwrite` (the default for the API; the CLI asks for --overwrite); a file or a
    non-empty directory that is not an nvcim checkpoint (or a checkpoint holding other files too) is
    refused before training starts.
    splits: an already loaded nvcim.data.DatasetSplits to use instead of loading `cfg.dataset`
    (must match cfg.dataset; lets a sweep or the CLI load the data once).
    Bad configuration, unknown names, a model that does not fit the data set's images and missing data
    raise before anything is written (and the first three before any data are loaded or downloaded).
    """
    from nvcim.checkpoint import save_checkpoint
    from nvcim.data import load_dataset
    from nvcim.methods import create_task, method_to_dict
    from nvcim.models import create_model

    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if out_dir is not None:
        out_dir = check_out_dir(out_dir, overwrite)
    check_model_fits_data(cfg)
    dev = resolve_device(cfg.device)
    amp = cfg.amp and dev.type == "cuda"
    if cfg.amp and not amp:
        warnings.warn("nvcim train: amp (bf16 autocast) is CUDA only; training in float32 on CPU")
    if splits is None:
        splits = load_dataset(cfg.dataset, cfg.data_root, val_fraction=cfg.val_fraction, seed=cfg.data_seed,
                              limit=cfg.limit)
    elif getattr(getattr(splits, "info", None), "name", cfg.dataset) != cfg.dataset:  # the checkpoint would lie
        raise ValueError(f"splits of dataset {splits.info.name!r} given for TrainConfig.dataset={cfg.dataset!r}: "
                         "pass the splits of that data set, or set dataset to match")
    if len(splits.train) == 0:
        raise ValueError(f"dataset {cfg.dataset!r} has an empty train split: raise limit or lower val_fraction")
    if len(splits.test) == 0:
        raise ValueError(f"dataset {cfg.dataset!r} has an empty test split: raise limit")
    info = splits.info
    augment = info.augment if cfg.augment is None else cfg.augment
    if augment and not info.augment:
        warnings.warn(f"augment=True has no effect on {info.name}: crop + flip is defined for CIFAR / Tiny ImageNet only")

    old_threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(cfg, out_dir, splits, info, augment, dev, amp, create_model, create_task, method_to_dict,
                      save_checkpoint)
    finally:
        if cfg.num_threads is not None:
            torch.set_num_threads(old_threads)


def _state_is_finite(model: nn.Module) -> bool:
    """No NaN / inf in any floating parameter or buffer (BatchNorm running statistics included)."""
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def _train(cfg, out_dir, splits, info, augment, dev, amp, create_model, create_task, method_to_dict, save_checkpoint):
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)  # init + training noise (CPU and all CUDA devices)
    gen = torch.Generator().manual_seed(cfg.seed)  # shuffling + augmentation
    model = create_model(cfg.model, info.num_classes, info.in_channels, width=cfg.width, image_size=info.image_size)
    model.to(dev)
    mcfg = cfg.method_cfg()
    task = create_task(mcfg, model, cfg.device_cfg())
    optimizer = _make_optimizer(cfg, model.parameters())
    steps_per_epoch = math.ceil(len(splits.train) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
                 if cfg.schedule == "cosine" else None)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    has_val = len(splits.val) > 0

    initial_state = _clone_state(model)
    best_state: dict | None = None
    best_epoch: int | None = None
    best_score = -math.inf
    best_val_noisy = best_val_clean = None
    history: list[dict] = []
    status, diverged_at, diverged_reason = STATUS_OK, None, None
    train_time, images = 0.0, 0

    from tqdm.auto import tqdm

    for epoch in range(1, cfg.epochs + 1):
        model.train()
        # disable=None: no bar when stderr is not a TTY (logs of sweeps stay clean)
        bar = (tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, file=sys.stderr,
                    dynamic_ncols=True, disable=None) if cfg.progress else _Silent())
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)  # Σ loss·B over finite steps
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        bad_step = torch.full((), -1, dtype=torch.int64, device=dev)  # first non-finite step of the epoch
        seen = shown = 0
        lr = optimizer.param_groups[0]["lr"]  # the rate this epoch starts with (the schedule steps per step)
        t0 = time.perf_counter()
        for step, (x, y) in enumerate(
            splits.train.batches(cfg.batch_size, shuffle=True, augment=augment, generator=gen, device=dev), start=1
        ):  # x [B,C,H,W] float, y [B] int64
            with autocast():
                loss, out = task(x, y)  # loss [], out [B, classes]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            ld = loss.detach()
            finite = torch.isfinite(ld)
            bad_step = torch.where((bad_step < 0) & ~finite, torch.full_like(bad_step, step), bad_step)
            loss_sum += torch.where(finite, ld.double(), torch.zeros_like(loss_sum)) * y.numel()
            correct += (out.detach().argmax(1) == y).sum()
            seen += int(y.numel())
            if step % BAR_EVERY == 0 or step == steps_per_epoch:
                bad = int(bad_step)  # the only host sync of the step, every BAR_EVERY steps
                if bad > 0:
                    break
                bar.update(step - shown)
                shown = step
                bar.set_postfix_str(f"loss {float(loss_sum) / seen:.4f} acc {100.0 * int(correct) / seen:.2f}%")
        bar.close()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        train_time += time.perf_counter() - t0
        images += seen
        bad = int(bad_step)
        if bad > 0:
            status, diverged_at, diverged_reason = STATUS_DIVERGED, {"epoch": epoch, "step": bad}, REASON_LOSS
            _say(cfg, f"epoch {epoch}: non-finite loss at step {bad}: stopping (status diverged)")
            break
        if not _state_is_finite(model):  # every loss finite, but the last steps broke a weight or a BN statistic
            status, diverged_reason = STATUS_DIVERGED, REASON_STATE
            diverged_at = {"epoch": epoch, "step": steps_per_epoch}
            _say(cfg, f"epoch {epoch}: {REASON_STATE} after the last step: stopping (status diverged)")
            break
        record = {
            "epoch": epoch,
            "train_loss": float(loss_sum) / max(seen, 1),
            "train_accuracy": 100.0 * int(correct) / max(seen, 1),
            "lr": lr,
            "epoch_time_s": time.perf_counter() - t0,
        }
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            if has_val:
                record["val_clean"], finite = _clean_pass(model, splits.val, 1024, dev)
                if not finite:  # finite weights can still overflow to inf / NaN logits
                    status, diverged_reason = STATUS_DIVERGED, REASON_VAL
                    diverged_at = {"epoch": epoch, "step": steps_per_epoch}
                    _say(cfg, f"epoch {epoch}: {REASON_VAL}: stopping (status diverged)")
                    break
                if cfg.val_runs > 0:
                    res = _mc(model, splits.val, cfg, cfg.val_runs, VAL_MC_SEED, dev)
                    record["val_noisy_mean"], record["val_noisy_std"] = (
                        res.mean, res.std if math.isfinite(res.std) else None)
            if not has_val or cfg.select == "last":
                score = float(epoch)  # no val split: keep the last evaluated epoch
            else:
                score = record["val_noisy_mean"] if cfg.select == "noisy" else record["val_clean"]
            if score > best_score:
                best_score, best_epoch, best_state = score, epoch, _clone_state(model)
                best_val_noisy, best_val_clean = record.get("val_noisy_mean"), record.get("val_clean")
            model.train()
        history.append(record)
        msg = f"epoch {epoch}/{cfg.epochs}: loss {record['train_loss']:.4f} train {record['train_accuracy']:.2f}%"
        if "val_clean" in record:
            msg += f" val clean {record['val_clean']:.2f}%"
        if "val_noisy_mean" in record:
            msg += f" val σ={cfg.sigma:g} {record['val_noisy_mean']:.2f}%"
        _say(cfg, msg)

    model.load_state_dict(best_state if best_state is not None else initial_state)
    model = task.finish()
    model.eval()
    test_clean, finite = _clean_pass(model, splits.test, 1024, dev)
    if not finite and status == STATUS_OK:  # e.g. no val split, so nothing looked at the outputs before
        status, diverged_reason = STATUS_DIVERGED, REASON_TEST
        diverged_at = {"epoch": best_epoch, "step": steps_per_epoch}
        _say(cfg, f"{REASON_TEST} with the weights of epoch {best_epoch} (status diverged)")
    test_noisy = _mc(model, splits.test, cfg, cfg.val_runs, TEST_MC_SEED, dev) if cfg.val_runs > 0 else None
    metrics = {
        "status": status,
        "diverged_at": diverged_at,
        "diverged_reason": diverged_reason,
        "history": history,
        "best_epoch": best_epoch,
        "best_val_noisy": best_val_noisy,
        "best_val_clean": best_val_clean,
        "test_clean": test_clean,
        "test_noisy_mean": test_noisy.mean if test_noisy is not None else None,
        "test_noisy_std": (test_noisy.std if test_noisy is not None and math.isfinite(test_noisy.std) else None),
        "test_noisy_runs": cfg.val_runs,
        "test_noisy_seed": TEST_MC_SEED,
        "val_mc_seed": VAL_MC_SEED,
        "n_train": len(splits.train),
        "n_val": len(splits.val),
        "n_test": len(splits.test),
        "train_time_s": train_time,
        "images_per_s": images / train_time if train_time > 0 else None,
        "device": str(dev),
        "amp": amp,
    }
    metrics["wall_time_s"] = time.perf_counter() - t_start
    checkpoint = None
    if out_dir is not None:
        checkpoint = save_checkpoint(
            out_dir,
            model,
            model.nvcim_spec,
            data={"name": cfg.dataset, "root": cfg.data_root, "val_fraction": cfg.val_fraction, "limit": cfg.limit,
                  "seed": cfg.data_seed},
            method=method_to_dict(mcfg),
            device=cfg.device_cfg().to_dict(),
            train=cfg.to_dict(),
            seed=cfg.seed,
            metrics=metrics,
        )
    return TrainResult(status=status, model=model, metrics=metrics, checkpoint=checkpoint, config=cfg)


__all__ = [
    "TrainConfig",
    "TrainResult",
    "PRESETS",
    "DEFAULTS",
    "FIELDS",
    "preset_config",
    "read_config_file",
    "load_train_config",
    "check_out_dir",
    "check_model_fits_data",
    "resolve_device",
    "tune_malloc",
    "train",
]
