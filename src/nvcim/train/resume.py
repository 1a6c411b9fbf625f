"""Resuming an interrupted training (the loop's side of nvcim.io.train_state): is a saved state this run's, and the
random streams and run conditions it records.

    problem = resume_problem(cfg, state_dir, splits)   # None: nothing there, or a state this run resumes
    check_resumable(state, cfg, splits, path)          # TrainStateError (one line) unless cfg and data match
    check_same_run(have, run_record(dev, amp), path)   # CPU vs CUDA, amp, GPU count must match
    rng_state(gen, dev) / restore_rng(rng, gen, dev)   # every stream the loop draws from
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from nvcim.io.train_state import (TrainStateError, is_train_state_dir, read_train_state, recover_train_state,
                                  state_dir_problem)
from nvcim.train.checks import resolve_device
from nvcim.train.config import TrainConfig

RESUME_IGNORED = ("progress", "num_threads")  # TrainConfig fields that may differ between the parts of one run


def as_json(value):
    """`value` as it reads back from JSON (tuples become lists), so a record compares equal to its reading."""
    return json.loads(json.dumps(value))


def data_record(splits) -> dict:
    return as_json({"name": splits.info.name, "n_train": len(splits.train), "n_val": len(splits.val),
                     "n_test": len(splits.test), "file": splits.fingerprint})


def check_resumable(state, cfg: TrainConfig, splits, path: Path) -> None:
    """TrainStateError unless `state` was written by a run of `cfg` on these splits."""
    have = {k: v for k, v in state.record["train"].items() if k not in RESUME_IGNORED}
    want = {k: v for k, v in as_json(cfg.to_dict()).items() if k not in RESUME_IGNORED}
    diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
    if diff:
        shown = "; ".join(f"{k}: {have.get(k)!r} there, {want.get(k)!r} now" for k in diff[:2])
        raise TrainStateError(f"training state {path} is of another configuration ({shown}): run the configuration "
                              "that made it, or delete the directory to train from the start")
    if state.record["data"] != data_record(splits):
        raise TrainStateError(f"training state {path} was trained on other data ({state.record['data']}): restore "
                              "that data set, or delete the directory to train from the start")
    if state.record["epochs"] != cfg.epochs:  # part of the configuration, checked again for a clear message
        raise TrainStateError(f"training state {path}: {state.record['epochs']} epochs there, {cfg.epochs} now")


def run_record(dev: torch.device, amp: bool) -> dict:
    """Where this run's epochs run: a resumed part must run on the same kind of device, with the same precision."""
    return {"device_type": dev.type, "amp": bool(amp), "threads": torch.get_num_threads(),
            "cuda_devices": torch.cuda.device_count() if dev.type == "cuda" else 0}


def check_same_run(have: dict, now: dict, path: Path) -> None:
    """TrainStateError when the finished epochs ran elsewhere (CPU vs CUDA, amp, another number of GPUs); only another
    number of CPU threads is allowed (`warn_other_threads`: float results depend on it in the last bits)."""
    def where(r):
        return r["device_type"] + (f" ({r['cuda_devices']} GPUs{', bf16 autocast' if r['amp'] else ''})"
                                   if r["device_type"] == "cuda" else "")

    if any(have[k] != now[k] for k in ("device_type", "amp", "cuda_devices")):
        raise TrainStateError(f"training state {path}: its epochs ran on {where(have)}, this run trains on {where(now)}:"
                              " resume where it ran (CUDA_VISIBLE_DEVICES, TrainConfig.device), or delete the "
                              "directory to train from the start")

def warn_other_threads(have: dict, now: dict, path: Path) -> None:
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
