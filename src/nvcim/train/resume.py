"""Resuming an interrupted training (the loop's side of nvcim.io.train_state): is a saved state this run's, and the
random streams and run conditions it records.

    problem = resume_problem(cfg, state_dir, splits)   # None: nothing there, or a state this run resumes
    check_resumable(state, cfg, splits, path)          # TrainStateError (one line) unless cfg and data match
    check_same_run(have, run_record(dev, amp), path)   # CPU vs CUDA, amp, GPU count must match
    rng_state(gen, dev) / restore_rng(rng, gen, dev)   # every stream the loop draws from
    left_by_finished_run(state_dir, out_dir)           # the state a kill left after out_dir was written (stale)
    check_optimizer_state(optimizer, saved)            # ValueError unless the saved state fits this optimizer
    check_scheduler_state(scheduler, saved)            # ValueError unless it holds what this scheduler saves
"""

from __future__ import annotations

import json
from typing import Any
import math
import warnings
from pathlib import Path

import torch

from nvcim.io.train_state import (TrainStateError, is_train_state_dir, read_train_state, recover_train_state,
                                  state_dir_problem)
from nvcim.train.checks import resolve_device
from nvcim.train.config import TrainConfig

# TrainConfig fields that may differ between the parts of one run: "device" ("auto" or "cpu" naming one machine:
# where the epochs ran is the run record's, check_same_run) and "data_root" (what was read is the data record's digest)
RESUME_IGNORED = ("progress", "num_threads", "device", "data_root")
FRESH_START = "delete the directory to train from the start"  # the fix of a state that cannot be resumed (never done
# by `train`: the state holds the finished epochs; `nvcim train` names the directory and --out)


def as_json(value):
    """`value` as it reads back from JSON (tuples become lists), so a record compares equal to its reading."""
    return json.loads(json.dumps(value))


def data_record(splits) -> dict:
    return as_json({"name": splits.info.name, "n_train": len(splits.train), "n_val": len(splits.val),
                     "n_test": len(splits.test), "file": splits.fingerprint, "sha256": splits.sha256()})


def _same_data(have: dict, now: dict) -> bool:
    """Whether a state's data record is these splits' (a state written before records held the content digest is
    judged by the rest)."""
    return have == (now if "sha256" in have else {k: v for k, v in now.items() if k != "sha256"})


def _leaf_differences(have: Any, want: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """[(dotted key, value there, value now)] of the innermost fields two records differ in, the shallowest first
    (a changed σ is "sigma: 0.2 there, 0.25 now", not two whole device records)."""
    if isinstance(have, dict) and isinstance(want, dict):
        out = [d for k in sorted(set(have) | set(want), key=str)
               for d in _leaf_differences(have.get(k), want.get(k), f"{prefix}{k}.")]
        return sorted(out, key=lambda d: d[0].count("."))
    return [] if have == want else [(prefix.rstrip("."), have, want)]


def check_resumable(state, cfg: TrainConfig, splits, path: Path) -> None:
    """TrainStateError unless `state` was written by a run of `cfg` on these splits."""
    have = {k: v for k, v in state.record["train"].items() if k not in RESUME_IGNORED}
    want = {k: v for k, v in as_json(cfg.to_dict()).items() if k not in RESUME_IGNORED}
    diff = _leaf_differences(have, want)
    if diff:
        shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in diff[:2])
        raise TrainStateError(f"training state {path} is of another configuration ({shown}): run the configuration "
                              f"that made it, or {FRESH_START}")
    if not _same_data(state.record["data"], data_record(splits)):
        now = data_record(splits)
        shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in _leaf_differences(
            state.record["data"], {k: v for k, v in now.items() if k in state.record["data"]})[:2])
        raise TrainStateError(f"training state {path} was trained on other data ({shown or state.record['data']}): "
                              f"restore that data set, or {FRESH_START}")
    if state.record["epochs"] != cfg.epochs:  # part of the configuration, checked again for a clear message
        raise TrainStateError(f"training state {path}: {state.record['epochs']} epochs there, {cfg.epochs} now")


def run_record(dev: torch.device, amp: bool) -> dict:
    """Where this run's epochs run: a resumed part must run on the same kind of device, with the same precision."""
    from nvcim.evaluate.partial import code_fingerprint

    return {"device_type": dev.type, "amp": bool(amp), "threads": torch.get_num_threads(),
            "cuda_devices": torch.cuda.device_count() if dev.type == "cuda" else 0,
            "code": code_fingerprint()}  # nvcim's sources, the plugins, torch: a resume under other code is said


def check_same_run(have: dict, now: dict, path: Path) -> None:
    """TrainStateError when the finished epochs ran elsewhere (CPU vs CUDA, amp, another number of GPUs); only another
    number of CPU threads is allowed (`warn_other_threads`: float results depend on it in the last bits)."""
    def where(r):
        return r["device_type"] + (f" ({r['cuda_devices']} GPUs{', bf16 autocast' if r['amp'] else ''})"
                                   if r["device_type"] == "cuda" else "")

    if any(have[k] != now[k] for k in ("device_type", "amp", "cuda_devices")):
        raise TrainStateError(f"training state {path}: its epochs ran on {where(have)}, this run trains on "
                              f"{where(now)}: resume where it ran (CUDA_VISIBLE_DEVICES, TrainConfig.device), or "
                              f"{FRESH_START}")

def warn_other_threads(have: dict, now: dict, path: Path) -> None:
    """Warn when the finished epochs ran with another number of threads, or under other code (an edited or updated
    nvcim, its plugins, another torch: recorded since states hold "code"): the run may differ from an uninterrupted
    one."""
    if have.get("code") and have.get("code") != now.get("code"):
        warnings.warn(f"training state {path}: its epochs ran under other code (nvcim's sources, its plugins or torch "
                      "changed since): the resumed run may differ from an uninterrupted one; start afresh (delete "
                      "the state) to train all epochs under this code")
    if have["threads"] != now["threads"]:
        warnings.warn(f"training state {path}: its epochs ran with {have['threads']} torch threads, this part with "
                      f"{now['threads']}: CPU float results depend on the thread count, so the weights may differ in "
                      "the last bits from an uninterrupted run (TrainConfig.num_threads fixes it)")


def resume_problem(cfg: TrainConfig, state_dir, splits) -> str | None:
    """Why `train(cfg, state_dir=state_dir, splits=splits)` would refuse the training state there (one line), or
    None: nothing there (a fresh start), or a state of this configuration and data (it resumes)."""
    state_dir = Path(state_dir)
    recover_train_state(state_dir)
    problem = state_dir_problem(state_dir)
    if problem:
        return f"training state {state_dir}: {problem}"
    if not is_train_state_dir(state_dir):
        return None
    try:
        state = read_train_state(state_dir)
        check_resumable(state, cfg, splits, state_dir)
        dev = resolve_device(cfg.device)
        check_same_run(state.record["run"], run_record(dev, cfg.amp and dev.type == "cuda"), state_dir)
    except TrainStateError as exc:
        return str(exc)
    return None


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """ValueError unless `saved` (an optimizer state dict) fits this optimizer: its parameter groups, their settings
    (all but the scheduled lr equal this configuration's; a flag torch fills in itself may be missing) and every
    per-parameter tensor (Adam's moments, SGD's momentum) in its parameter's shape. torch's own load_state_dict checks
    only the group sizes; anything else would fail later, inside a step, or train with other settings."""
    fresh = optimizer.state_dict()["param_groups"]
    groups = saved.get("param_groups")
    if (not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups)
            or [len(g.get("params", ())) for g in groups] != [len(g["params"]) for g in fresh]):
        raise ValueError("the optimizer state has other parameter groups than this model's optimizer")
    for g_saved, g_fresh in zip(groups, fresh):
        for key, value in g_fresh.items():
            if key in ("params", "lr"):
                continue
            if key not in g_saved and (isinstance(value, bool) or value is None):
                continue  # a flag a torch version does not save; its load_state_dict fills it in
            if g_saved.get(key, "missing") != value:
                raise ValueError(f"the optimizer state has {key}={g_saved.get(key, 'missing')!r}, this configuration "
                                 f"{value!r}")
        if not _finite_number(g_saved.get("lr")) or g_saved["lr"] < 0:
            raise ValueError(f"the optimizer state has lr={g_saved.get('lr')!r}: not a learning rate")
    shapes = {}
    for g_saved, group in zip(groups, optimizer.param_groups):
        shapes.update(zip(g_saved["params"], (p.shape for p in group["params"])))
    state = saved.get("state")
    if not isinstance(state, dict):
        raise ValueError("the optimizer state has no per-parameter state")
    for pid, entry in state.items():
        if pid not in shapes:
            raise ValueError(f"the optimizer state names parameter {pid!r}, which this optimizer does not have")
        if not isinstance(entry, dict):
            raise ValueError(f"the optimizer state of parameter {pid!r} is not a mapping")
        for name, value in entry.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != shapes[pid]:
                raise ValueError(f"optimizer {name!r} of parameter {pid} has shape {tuple(value.shape)}, the "
                                 f"parameter {tuple(shapes[pid])}")


SCHEDULE_STEP_KEYS = ("last_epoch", "_step_count", "_last_lr")  # where the schedule is; the rest is its configuration


def check_scheduler_state(scheduler, saved) -> None:
    """ValueError unless `saved` is a state of this learning-rate schedule (None when the run has none): the keys that
    say where it is (SCHEDULE_STEP_KEYS) with sane values, and every other public key it shares with this schedule's
    state (T_max, eta_min, base_lrs) equal. An empty or partial dict would load silently and restart the schedule;
    keys one torch version saves and another does not are allowed."""
    if scheduler is None:
        if saved is not None:
            raise ValueError("the state has a learning-rate schedule, this configuration none")
        return
    fresh = scheduler.state_dict()
    if not isinstance(saved, dict):
        raise ValueError("the learning-rate schedule state is not a mapping")
    missing = [k for k in SCHEDULE_STEP_KEYS if k in fresh and k not in saved]
    if missing:
        raise ValueError(f"the learning-rate schedule state lacks {missing}")
    for key, value in fresh.items():
        if key not in SCHEDULE_STEP_KEYS and not key.startswith("_") and key in saved and saved[key] != value:
            raise ValueError(f"the learning-rate schedule state has {key}={saved[key]!r}, this configuration {value!r}")
    last = saved.get("last_epoch")
    lrs = saved.get("_last_lr")
    if (not isinstance(last, int) or isinstance(last, bool) or last < 0
            or (lrs is not None and not (isinstance(lrs, list) and all(_finite_number(v) for v in lrs)))):
        raise ValueError(f"the learning-rate schedule state has last_epoch={last!r}, _last_lr={lrs!r}")


def left_by_finished_run(state_dir, out_dir) -> bool:
    """Whether the training state at `state_dir` was left by the run that wrote the final checkpoint in `out_dir`:
    train() writes the checkpoint, then removes the state, so a kill between the two leaves a stale state. It is that
    run's when it is older than the checkpoint and holds the same configuration, data and epoch history; a state of a
    later run (an --overwrite run killed mid-way) is newer than the checkpoint and is kept."""
    from nvcim.io.checkpoint import CONFIG_FILE, is_checkpoint_dir, read_checkpoint_config
    from nvcim.io.train_state import RECORD_FILE

    state_dir, out_dir = Path(state_dir), Path(out_dir)
    if not (is_train_state_dir(state_dir) and is_checkpoint_dir(out_dir)) or state_dir_problem(state_dir):
        return False
    try:
        if (state_dir / RECORD_FILE).stat().st_mtime_ns >= (out_dir / CONFIG_FILE).stat().st_mtime_ns:
            return False
        record = read_train_state(state_dir).record
        config = as_json(read_checkpoint_config(out_dir))
    except (TrainStateError, ValueError, OSError):
        return False
    made, have = config.get("train"), record["train"]
    history = (config.get("metrics") or {}).get("history")
    return (isinstance(made, dict) and isinstance(history, list)
            and all(have.get(k) == made.get(k) for k in set(have) | set(made) if k not in RESUME_IGNORED)
            and record["data"].get("file") == (config.get("data") or {}).get("file")
            and record["loop"]["history"] == history[:record["epoch"]])


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160]}" if text else type(exc).__name__


def rng_state(gen: torch.Generator, dev: torch.device) -> dict:
    """Every random stream the loop draws from: the global CPU one, CUDA's when training there, the data generator."""
    return {"torch": torch.get_rng_state(), "generator": gen.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if dev.type == "cuda" else None}


def restore_rng(rng: dict, gen: torch.Generator, dev: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    gen.set_state(rng["generator"])
    if dev.type == "cuda":  # the same number of GPUs (check_same_run)
        torch.cuda.set_rng_state_all(rng["cuda"])
