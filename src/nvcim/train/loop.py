"""Training loop for every method (SPEC §3, §5): validation under noise, divergence, the checkpoint.

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
    each step is `task(x, y)`, then backward and one optimizer step over `task.parameters()` (the
    model's, plus a method's own, e.g. IRS's heads). The LR schedule (cosine
    annealing to 0 over all training steps, or constant) is stepped once per optimizer step.
  * after every `eval_every` epochs (and after the last): Monte Carlo validation accuracy under
    device variation at the training σ (`val_runs` chips, fixed seed VAL_MC_SEED, so epochs are
    compared on the same chips) and clean validation accuracy. The best state (`select`: by noisy
    validation mean by default; by clean accuracy; or the last epoch; always the last evaluated
    epoch when there is no val split) is kept in memory (a copy of the state dict) and restored at
    the end. Ties keep the earlier epoch.
  * end: `task.finish()` (plain backbone), clean test accuracy and a quick Monte Carlo test accuracy
    at the training σ (`val_runs` chips, seed TEST_MC_SEED; the full evaluation is `nvcim eval`),
    and, with `out_dir`, one atomic checkpoint (nvcim.io.checkpoint.save_checkpoint).
  * with `state_dir`: after every epoch the whole training state (weights, optimizer, schedule, every RNG,
    best state, history; nvcim.io.train_state) is written there atomically; a run started again with the
    same configuration resumes after the last finished epoch and ends with exactly the weights of an
    uninterrupted run (metrics["resumed_after_epochs"] lists where it was taken up; "wall_time_s" and
    "train_time_s" add up every part). The state is removed once the checkpoint is written.

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
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from nvcim.io.checkpoint import save_checkpoint
from nvcim.io.train_state import (TrainStateError, is_train_state_dir, read_train_state, recover_train_state,
                                  remove_train_state, save_train_state, state_dir_problem)
from nvcim.train.resume import (FRESH_START, as_json, check_optimizer_state, check_resumable, check_same_run,
                                check_scheduler_state, data_record, first_line, restore_rng, rng_state, run_record,
                                warn_other_threads)
from nvcim.data import load_dataset
from nvcim.evaluate import monte_carlo_evaluate
from nvcim.evaluate.plausibility import ImplausibleResultWarning
from nvcim.methods import create_task, method_to_dict
from nvcim.models import create_model
from nvcim.layers.noise import digital_layers, keep_digital_, variation_disabled
from nvcim.train.checks import (check_layers_read, check_model_fits_data, check_model_output, check_out_dir,
                                resolve_device)
from nvcim.train.config import TrainConfig

VAL_MC_SEED = 1  # Monte Carlo seed of every validation (same chips every epoch)
TEST_MC_SEED = 0  # Monte Carlo seed of the quick test evaluation (= the first chips of `nvcim eval --seed 0`)
BAR_EVERY = 10  # steps between progress-bar refreshes (each one is a host sync on CUDA)
LINE_EVERY_S = 300.0  # without a terminal (a log file): a progress line within an epoch at most this often

STATUS_OK = "ok"
STATUS_DIVERGED = "diverged"
# metrics["diverged_reason"]: what was non-finite
REASON_LOSS = "non-finite loss"
REASON_STATE = "non-finite weights or BatchNorm statistics"
REASON_VAL = "non-finite outputs on the validation split"
REASON_TEST = "non-finite outputs on the test split"


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


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _clean_pass(model: nn.Module, split, batch_size: int, device: torch.device) -> tuple[float, bool]:
    """(top-1 accuracy in %, whether every logit was finite) of the float weights, eval mode, noise hooks
    (if any) disabled. A row with a NaN / inf logit predicts nothing (as in nvcim.evaluate)."""
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
    """Monte Carlo accuracy at the training σ; the clean accuracy comes from _clean_pass, not from here. A mean below
    chance is not warned about (an early epoch's often is): `nvcim train`'s summary marks the test one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImplausibleResultWarning)
        return monte_carlo_evaluate(model, split, cfg.device_cfg(), runs=runs, seed=seed, batch_size=1024,
                                    device=device, baselines=False)


class _Silent:
    """Stand-in for a tqdm bar when progress is off."""

    def update(self, n=1):
        pass

    def set_postfix_str(self, s, refresh=True):
        pass

    def close(self):
        pass


def _duration(seconds: float) -> str:
    """'45 s', '12 min', '3.4 h': a remaining time for a progress line."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _check_task_output(method: str, loss, out, y: torch.Tensor) -> None:
    """A method's task returns (loss [], logits [B, classes]): a plugin's that does not is named in one line."""
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0 and isinstance(out, torch.Tensor) and out.dim() == 2
            and out.shape[0] == y.shape[0]):
        shapes = [list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in (loss, out)]
        raise ValueError(f"method {method!r}: its training task returned loss {shapes[0]} and logits {shapes[1]} for "
                         f"{y.shape[0]} images: return (a scalar loss, logits [batch, classes])")


def _say(cfg: TrainConfig, msg: str) -> None:
    if cfg.progress:
        tqdm.write(msg, file=sys.stderr)


# ---- training --------------------------------------------------------------------------------------
def train(cfg: TrainConfig, out_dir=None, *, overwrite: bool = True, splits=None, state_dir=None,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Train one model as `cfg` says; returns a TrainResult and never raises on divergence.

    out_dir: write the checkpoint there at the end (atomically). An existing checkpoint there is
    replaced when `overwrite` (the default for the API; the CLI asks for --overwrite); a file or a
    non-empty directory that is not an nvcim checkpoint (or a checkpoint holding other files too) is
    refused before training starts.
    splits: an already loaded nvcim.data.DatasetSplits to use instead of loading `cfg.dataset`
    (must match cfg.dataset; lets a sweep or the CLI load the data once).
    state_dir: keep the training state there after every epoch and resume from it (module docstring); a state
    of another configuration or data, or one that cannot be read, is refused (TrainStateError, one line)
    before any training, as is a directory there that is not nvcim's training state.
    log: where progress lines go instead of stderr (a sweep cell prefixes them with its id): every epoch's line,
    and within an epoch one at most every LINE_EVERY_S seconds; no bar is drawn, whatever cfg.progress says.
    Bad configuration, unknown names, a model that does not fit the data set's images and missing data
    raise before anything is written (and the first three before any data are loaded or downloaded).
    """

    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if out_dir is not None:
        out_dir = check_out_dir(out_dir, overwrite, cfg)
    if state_dir is not None:
        state_dir = Path(state_dir)
        if out_dir is not None:
            a, b = out_dir.resolve(), state_dir.resolve()
            if a == b or a in b.parents or b in a.parents:  # the checkpoint write would refuse or replace it
                raise TrainStateError(f"training state {state_dir} and the output {out_dir} overlap: keep the state "
                                      "beside the checkpoint, not in it")
        recover_train_state(state_dir)
        problem = state_dir_problem(state_dir)
        if problem:
            raise TrainStateError(f"training state {state_dir}: {problem}")
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
        return _train(cfg, out_dir, splits, info, augment, dev, amp, state_dir, log)
    finally:
        if cfg.num_threads is not None:
            torch.set_num_threads(old_threads)


def _state_is_finite(model: nn.Module) -> bool:
    """No NaN / inf in any floating parameter or buffer (BatchNorm running statistics included)."""
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def _train(cfg: TrainConfig, out_dir: Path | None, splits, info, augment: bool, dev: torch.device, amp: bool,
           state_dir: Path | None, log: Callable[[str], None] | None) -> TrainResult:
    t_start = time.perf_counter()
    say = log if log is not None else (lambda msg: _say(cfg, msg))
    torch.manual_seed(cfg.seed)  # init + training noise (CPU and all CUDA devices)
    gen = torch.Generator().manual_seed(cfg.seed)  # shuffling + augmentation
    model = create_model(cfg.model, info.num_classes, info.in_channels, width=cfg.width, image_size=info.image_size)
    keep_digital_(model, cfg.digital_layers)  # every device model below (method, validation) leaves them exact
    model.to(dev)
    x_check, _ = next(splits.train.batches(2, device=dev))  # x [2, C, H, W]: the first two training images
    check_model_output(model, x_check, info.num_classes, cfg)
    x_batch, _ = next(splits.train.batches(cfg.batch_size, device=dev))  # [B, C, H, W]: a routed branch's images
    check_layers_read(model, x_batch, cfg)  # before any step: Monte Carlo validation would refuse the model
    mcfg = cfg.method_cfg()
    task = create_task(mcfg, model, cfg.device_cfg())
    optimizer = _make_optimizer(cfg, task.parameters())  # IRS: its heads too
    steps_per_epoch = math.ceil(len(splits.train) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
                 if cfg.schedule == "cosine" else None)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    has_val = len(splits.val) > 0
    saved_once: dict | None = None
    if not has_val and cfg.select != "last" and cfg.val_fraction > 0:  # (val_fraction 0: the user asked for none)
        warnings.warn(f"nvcim: the validation split is empty (val_fraction {cfg.val_fraction:g} of "
                      f"{len(splits.train)} training images rounds to 0): the last epoch is kept, not the best one by "
                      f"select={cfg.select!r}; raise val_fraction (or limit) for a validated choice", stacklevel=2)

    initial_state = _clone_state(model)
    best_state: dict | None = None
    best_epoch: int | None = None
    best_score = -math.inf
    best_val_noisy = best_val_clean = None
    history: list[dict] = []
    status, diverged_at, diverged_reason = STATUS_OK, None, None
    train_time, images, wall_before = 0.0, 0, 0.0
    first_epoch, resumed = 1, []
    state = None
    if state_dir is not None and is_train_state_dir(state_dir):
        try:
            state = read_train_state(state_dir)
        except TrainStateError as exc:  # damaged (a truncated state.pt): kept, it is the user's to delete
            raise TrainStateError(f"{exc}: {FRESH_START}") from None
    if state is not None:  # an interrupted run of this configuration: take it up after its last finished epoch
        check_resumable(state, cfg, splits, state_dir)
        check_same_run(state.record["run"], run_record(dev, amp), state_dir)
        warn_other_threads(state.record["run"], run_record(dev, amp), state_dir)
        t, loop = state.tensors, state.record["loop"]
        try:
            model.load_state_dict(t["model"])
            task.load_own_state_dict(t["task"])
            check_optimizer_state(optimizer, t["optimizer"])
            optimizer.load_state_dict(t["optimizer"])
            check_scheduler_state(scheduler, t["scheduler"])
            if scheduler is not None:
                scheduler.load_state_dict(t["scheduler"])
            layout = {k: v.shape for k, v in model.state_dict().items()}
            for kept in (t["initial"], t["best"]):
                if kept is not None and {k: v.shape for k, v in kept.items()} != layout:
                    raise ValueError("a kept state (initial or best) has other tensors than the model")
            restore_rng(t["rng"], gen, dev)  # last: building the model and the task drew from the global stream
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
            raise TrainStateError(f"training state {state_dir} does not fit this model ({first_line(exc)}): "
                                  f"{FRESH_START}") from None
        initial_state, best_state = t["initial"], t["best"]
        history, best_epoch, best_val_noisy, best_val_clean = (loop["history"], loop["best_epoch"],
                                                               loop["best_val_noisy"], loop["best_val_clean"])
        best_score = -math.inf if loop["best_score"] is None else loop["best_score"]
        train_time, images, wall_before = loop["train_time_s"], loop["images"], loop["wall_time_s"]
        resumed = loop["resumed_after_epochs"] + [state.record["epoch"]]
        first_epoch = state.record["epoch"] + 1
        say(f"resuming after epoch {state.record['epoch']} of {cfg.epochs} ({state_dir})")

    t_epochs = time.perf_counter()  # for the ETA of the epoch lines (this part's epochs, validation included)
    for epoch in range(first_epoch, cfg.epochs + 1):
        model.train()
        # disable=None: no bar when stderr is not a TTY (logs of sweeps stay clean)
        bar = (tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, file=sys.stderr,
                    dynamic_ncols=True, disable=None) if cfg.progress and log is None else _Silent())
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)  # Σ loss·B over finite steps
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        bad_step = torch.full((), -1, dtype=torch.int64, device=dev)  # first non-finite step of the epoch
        seen = shown = 0
        lr = optimizer.param_groups[0]["lr"]  # the rate this epoch starts with (the schedule steps per step)
        t0 = last_line = time.perf_counter()
        # no bar (a log file, or a sweep cell's log): a line now and then instead
        lines = log is not None or (cfg.progress and getattr(bar, "disable", False))
        for step, (x, y) in enumerate(
            splits.train.batches(cfg.batch_size, shuffle=True, augment=augment, generator=gen, device=dev), start=1
        ):  # x [B,C,H,W] float, y [B] int64
            with autocast():
                loss, out = task(x, y)  # loss [], out [B, classes]
            if step == 1:
                _check_task_output(mcfg.name, loss, out, y)
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
                if lines and time.perf_counter() - last_line >= LINE_EVERY_S:
                    last_line, spent = time.perf_counter(), time.perf_counter() - t0
                    say(f"epoch {epoch}/{cfg.epochs}: step {step}/{steps_per_epoch}, loss "
                        f"{float(loss_sum) / seen:.4f}, the epoch's training ends in about "
                        f"{_duration(spent * (steps_per_epoch - step) / step)}")
        bar.close()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        train_time += time.perf_counter() - t0
        images += seen
        bad = int(bad_step)
        if bad > 0:
            status, diverged_at, diverged_reason = STATUS_DIVERGED, {"epoch": epoch, "step": bad}, REASON_LOSS
            say(f"epoch {epoch}: non-finite loss at step {bad}: stopping (status diverged)")
            break
        if not _state_is_finite(model):  # every loss finite, but the last steps broke a weight or a BN statistic
            status, diverged_reason = STATUS_DIVERGED, REASON_STATE
            diverged_at = {"epoch": epoch, "step": steps_per_epoch}
            say(f"epoch {epoch}: {REASON_STATE} after the last step: stopping (status diverged)")
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
                    say(f"epoch {epoch}: {REASON_VAL}: stopping (status diverged)")
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
        if state_dir is not None and epoch < cfg.epochs:
            loop = {"history": history, "best_epoch": best_epoch, "best_val_noisy": best_val_noisy,
                    "best_val_clean": best_val_clean, "best_score": best_score if math.isfinite(best_score) else None,
                    "train_time_s": train_time, "images": images, "resumed_after_epochs": resumed,
                    "wall_time_s": wall_before + time.perf_counter() - t_start}
            tensors = {"model": _clone_state(model), "task": task.own_state_dict(), "optimizer": optimizer.state_dict(),
                       "scheduler": scheduler.state_dict() if scheduler is not None else None,
                       "rng": rng_state(gen, dev), "best": best_state, "initial": initial_state}
            if saved_once is None:  # what the state records of the data and the run: the same every epoch
                saved_once = {"data": data_record(splits), "run": run_record(dev, amp)}  # (hashes the splits, code)
            save_train_state(state_dir, tensors, {"epoch": epoch, "epochs": cfg.epochs, "train": as_json(cfg.to_dict()),
                                                  "loop": loop, **saved_once})
        msg = f"epoch {epoch}/{cfg.epochs}: loss {record['train_loss']:.4f} train {record['train_accuracy']:.2f}%"
        if "val_clean" in record:
            msg += f" val clean {record['val_clean']:.2f}%"
        if "val_noisy_mean" in record:
            msg += f" val σ={cfg.sigma:g} {record['val_noisy_mean']:.2f}%"
        if epoch < cfg.epochs:
            per_epoch = (time.perf_counter() - t_epochs) / (epoch - first_epoch + 1)
            msg += f" (ETA {_duration(per_epoch * (cfg.epochs - epoch))})"
        say(msg)

    model.load_state_dict(best_state if best_state is not None else initial_state)
    model = task.finish()
    model.eval()
    test_clean, finite = _clean_pass(model, splits.test, 1024, dev)
    if not finite and status == STATUS_OK:  # e.g. no val split, so nothing looked at the outputs before
        status, diverged_reason = STATUS_DIVERGED, REASON_TEST
        diverged_at = {"epoch": best_epoch, "step": steps_per_epoch}
        say(f"{REASON_TEST} with the weights of epoch {best_epoch} (status diverged)")
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
        "test_noisy_nonfinite_runs": test_noisy.nonfinite_runs if test_noisy is not None else None,  # chips with NaN
        "val_mc_seed": VAL_MC_SEED,
        "n_train": len(splits.train),
        "n_val": len(splits.val),
        "n_test": len(splits.test),
        "train_time_s": train_time,
        "images_per_s": images / train_time if train_time > 0 else None,
        "device": str(dev),
        "amp": amp,
        **({"resumed_after_epochs": resumed} if resumed else {}),
        **({"method_facts": task.facts} if task.facts else {}),  # e.g. where IRS placed its (dropped) heads
    }
    metrics["wall_time_s"] = wall_before + time.perf_counter() - t_start
    checkpoint = None
    if out_dir is not None:
        checkpoint = save_checkpoint(
            out_dir,
            model,
            model.nvcim_spec,
            data={"name": cfg.dataset, "root": _absolute(cfg.data_root), "val_fraction": cfg.val_fraction, "limit": cfg.limit,
                  "seed": cfg.data_seed, **({"file": splits.fingerprint} if splits.fingerprint else {}),
                  "val_sha256": splits.val.sha256(),  # the images held out: eval's --split val must be them
                  "normalization": {"mean": list(splits.info.mean), "std": list(splits.info.std)}},
            method=method_to_dict(mcfg),
            device=cfg.device_cfg().to_dict(),
            train=cfg.to_dict(),
            **({"digital_layers": list(cfg.digital_layers), "digital_layer_names": digital_layers(model)}
               if cfg.digital_layers else {}),
            seed=cfg.seed,
            metrics=metrics,
        )
    if state_dir is not None:
        remove_train_state(state_dir)  # the run is over (a diverged one too: nothing left to resume)
    return TrainResult(status=status, model=model, metrics=metrics, checkpoint=checkpoint, config=cfg)


def _absolute(root: str | None) -> str | None:
    """The data root as an absolute path (None: the default root): nvcim eval run from another directory reads the
    files trained on, not a folder of that name there (or a download into it)."""
    return None if root is None else str(Path(root).expanduser().resolve())
