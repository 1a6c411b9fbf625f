"""Running one sweep cell: train or reuse its checkpoint, search β, test under Monte Carlo chips, record it.

    summary = run_cell(cell, out_dir, threads)    # never raises for a failing cell: failed.json instead
    with cell_lines(True): ...                     # and each running cell's progress lines on stderr

Every backend calls run_cell (in process, in a pool worker, in a Ray task), so every backend writes the
same files and, with the same threads, the same numbers. A cell's files (package docstring): cell.json
first, checkpoints and β candidates as they finish (reused by a rerun), result.json last
(`result_payload`), or failed.json (`record_failure`).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from tqdm.auto import tqdm

from nvcim import evaluate, train
from nvcim.batchnorm import CALIBRATION_BATCH, ChipCalibration, batchnorm_layers, recalibration_record
from nvcim.io.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, load_checkpoint, read_checkpoint_config
from nvcim.io.train_state import RECORD_FILE as TRAIN_STATE_RECORD
from nvcim.io.train_state import TENSORS_FILE as TRAIN_STATE_TENSORS
from nvcim.io.train_state import TrainStateError, TrainStateSaveError, remove_train_state
from nvcim.data import load_dataset
from nvcim.evaluate.files import EvaluationFile, FailedCellFile, write_result_file
from nvcim.evaluate.plausibility import ImplausibleResultWarning
from nvcim.methods import search_symbol, searched_param
from nvcim.sweep.cells import Cell, fmt_beta, is_num
from nvcim.sweep.schema import TARGET_KEYS
from nvcim.sweep.files import (FAILED_FILE, RESULT_FILE, SCORE_FILE, TRAIN_STATE_DIR, cell_dir, link_or_copy_dir,
                               prepare_cell_dir, read_score)

_SPLITS_CACHE: dict[tuple, Any] = {}
_LINES = [False]  # progress lines of running cells on stderr: a sweep that shows progress turns them on


@contextlib.contextmanager
def cell_lines(enabled: bool) -> Iterator[None]:
    """Within: every cell run in this process says on stderr when it trains (which candidate of a search), how
    its epochs go (each epoch, and within one every few minutes: nvcim.train.loop.LINE_EVERY_S) and when it tests,
    each line headed by the cell's id. Off by default (the API, --quiet); the process pool passes the setting to
    its workers; Ray's tasks say nothing (their output stays on their nodes)."""
    before = _LINES[0]
    set_cell_lines(enabled)
    try:
        yield
    finally:
        set_cell_lines(before)


def cell_lines_enabled() -> bool:
    return _LINES[0]


def set_cell_lines(enabled: bool) -> None:
    """cell_lines for the rest of the process (a pool worker's)."""
    _LINES[0] = bool(enabled)


def _cell_log(cell_id: str, what: str = "") -> Callable[[str], None] | None:
    """A function writing one progress line of cell `cell_id` (None when lines are off)."""
    if not _LINES[0]:
        return None

    def log(msg: str) -> None:
        tqdm.write(f"  {cell_id}{what}: {msg}", file=sys.stderr)  # beside a bar in this process, or a worker's
        sys.stderr.flush()
    return log


def _splits(tc, data_file: str | None = None):
    key = (tc.dataset, tc.data_root, tc.val_fraction, tc.limit, tc.data_seed, data_file)
    if key not in _SPLITS_CACHE:
        if len(_SPLITS_CACHE) >= 2:
            _SPLITS_CACHE.clear()
        _SPLITS_CACHE[key] = load_dataset(tc.dataset, tc.data_root, val_fraction=tc.val_fraction, seed=tc.data_seed,
                                          limit=tc.limit)
    return _SPLITS_CACHE[key]


class CellDiverged(RuntimeError):
    pass


def _checkpoint_problem(config) -> str | None:
    """Why a cell checkpoint's config.json cannot be trusted by the sweep (None: it can): the entries the sweep
    reads ("metrics", "method") must have the types nvcim writes."""
    metrics = config.get("metrics")
    if metrics is not None and not isinstance(metrics, dict):
        return f"{CONFIG_FILE}: metrics={metrics!r} is not a mapping"
    metrics = metrics or {}
    for key, ok, what in (("status", lambda v: isinstance(v, str), "a string"),
                          ("diverged_at", lambda v: isinstance(v, dict), "a mapping"),
                          ("diverged_reason", lambda v: isinstance(v, str), "a string"),
                          ("wall_time_s", is_num, "a number")):
        if metrics.get(key) is not None and not ok(metrics[key]):
            return f"{CONFIG_FILE}: metrics.{key}={metrics[key]!r} is not {what}"
    method = config.get("method")
    if method is not None and not isinstance(method, dict):
        return f"{CONFIG_FILE}: method={method!r} is not a mapping"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _load_trusted(ckpt: Path):
    """(model, config) of the finished checkpoint at `ckpt`, or (None, why it cannot be trusted)."""
    try:
        model, config = load_checkpoint(ckpt)
    except (CheckpointError, TypeError, ValueError, KeyError, AttributeError) as exc:  # damaged outside nvcim's writes
        return None, _first_line(exc) if not isinstance(exc, CheckpointError) else str(exc).strip().splitlines()[0]
    problem = _checkpoint_problem(config)
    return (None, problem) if problem else (model, config)


def _drop_checkpoint(ckpt: Path) -> None:
    """Remove nvcim's own files of an untrusted cell checkpoint (its config and weights) and the directory; anything
    else there is not nvcim's and is kept: a one-line ValueError naming it (the cell fails until it is moved)."""
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        (ckpt / name).unlink(missing_ok=True)
    others = sorted(p.name for p in ckpt.iterdir())
    if others:
        raise ValueError(f"checkpoint {ckpt} also holds {others[:3]}{' ...' if len(others) > 3 else ''}, which are not "
                         "nvcim's: move them out of it to train the cell again")
    ckpt.rmdir()


def _train_or_load(tc, ckpt: Path, splits, notes: list[str] | None = None, cell_id: str = "?", what: str = ""):
    """(model, metrics, wall seconds spent training now, wall seconds of the earlier parts of a training resumed
    from its state) — reusing a finished checkpoint at `ckpt` (0, 0); `what` names a β candidate in progress
    lines. One that
    cannot be loaded or trusted (damaged outside nvcim's atomic writes) is trained again, with a line in
    `notes` naming the cell and the problem."""
    state = ckpt.parent / TRAIN_STATE_DIR  # the training state after every epoch: a killed cell resumes from it
    if (ckpt / CONFIG_FILE).is_file():
        model, config = _load_trusted(ckpt)
        if model is not None:
            model.eval()
            remove_train_state(state)  # left by a kill between the checkpoint's write and the state's removal
            return model, dict(config.get("metrics") or {}), 0.0, 0.0
        if notes is not None:
            notes.append(f"cell {cell_id}: checkpoint {_rel_to_cell(ckpt, cell_id)} cannot be reused ({config}): "
                         "it is trained again")
        _drop_checkpoint(ckpt)
    def restart(why) -> None:
        _drop_train_state(state)  # raises, removing nothing, when a file that is not nvcim's is there
        if notes is not None:
            notes.append(f"cell {cell_id}: {_rel_to_cell(state, cell_id)} cannot be resumed ({why}): it is trained "
                         "from the start")

    problem = train.resume_problem(tc, state, splits)
    if problem:
        restart(problem)
    log = _cell_log(cell_id, what)
    if log is not None:
        log(f"training ({tc.method}, {tc.epochs} epoch{'s' if tc.epochs != 1 else ''} of "
            f"{len(splits.train):,} images)")
    t0 = time.perf_counter()
    try:
        res = train.train(tc, out_dir=ckpt, splits=splits, state_dir=state, log=log)
    except TrainStateError as exc:  # a state that looked right but does not restore (damaged tensors)
        if isinstance(exc, TrainStateSaveError) or not state.exists():
            raise
        restart(exc)
        res = train.train(tc, out_dir=ckpt, splits=splits, state_dir=state, log=log)
    now = time.perf_counter() - t0
    return res.model, dict(res.metrics), now, max(0.0, res.metrics.get("wall_time_s", now) - now)


def _drop_train_state(state: Path) -> None:
    """Remove nvcim's files of a training state that cannot be resumed, and the directory; anything else there is
    not nvcim's and is kept: a one-line ValueError naming it (the cell fails until it is moved)."""
    if state.is_file() or state.is_symlink():
        raise ValueError(f"{state} is a file, where the cell keeps its training state: move it away")
    others = sorted(p.name for p in state.iterdir() if p.name not in (TRAIN_STATE_RECORD, TRAIN_STATE_TENSORS)) \
        if state.is_dir() else []
    if others:  # checked first: a state that is fine but for a user's file there is kept
        raise ValueError(f"training state {state} also holds {others[:3]}{' ...' if len(others) > 3 else ''}, which "
                         "are not nvcim's: move them out of it to resume or train the cell")
    for name in (TRAIN_STATE_RECORD, TRAIN_STATE_TENSORS):
        (state / name).unlink(missing_ok=True)
    if state.is_dir():
        state.rmdir()


def _rel_to_cell(path: Path, cell_id: str) -> str:
    """`path` relative to the cell's directory (…/cells/<id>/), or as given when it is not under it."""
    parts = path.as_posix().split("/cells/" + cell_id + "/", 1)
    return parts[1] if len(parts) == 2 else str(path)


def _diverged_msg(metrics: Mapping) -> str | None:
    if metrics.get("status") == "diverged":
        at = metrics.get("diverged_at") or {}
        reason = metrics.get("diverged_reason") or "non-finite loss"
        return f"training diverged ({reason}) at epoch {at.get('epoch')} step {at.get('step')}"
    return None


def _chip_calibration(cell: Cell, model, splits):
    """The per-chip BatchNorm calibration of `cell` (eval.bn_calibration_images), or None when off."""
    n = cell.eval.get("bn_calibration_images", 0)
    if not n:
        return None
    if not batchnorm_layers(model):
        raise ValueError(f"eval.bn_calibration_images = {n}, but {cell.model} has no BatchNorm statistics to "
                         "recalibrate: drop eval.bn_calibration_images")
    if len(splits.train) == 0:
        raise ValueError("eval.bn_calibration_images needs training images, and the train split is empty")
    return ChipCalibration(splits.train, images=n, batch_size=CALIBRATION_BATCH)


def _calibration_record(cell: Cell, splits) -> dict | None:
    """result.json's "bn_recalibration" (as `nvcim eval` writes it): None when off."""
    n = cell.eval.get("bn_calibration_images", 0)
    return recalibration_record("each chip", n, len(splits.train)) if n else None


def _adc_source(cell: Cell, cfg, splits):
    """What a calibrated ADC clip measures each chip on (eval.adc_calibration): the train split for "train", else None
    (the evaluated images, monte_carlo_evaluate's default); None for a device without a calibrated clip."""
    if cell.eval.get("adc_calibration") != "train" or not cfg.calibrated_adc:
        return None
    if len(splits.train) == 0:
        raise ValueError("eval.adc_calibration = 'train' needs training images, and the train split is empty")
    return splits.train


def _adc_record(cell: Cell, splits) -> dict | None:
    """result.json's "adc_calibration" (as `nvcim eval` writes it): None without a calibrated clip."""
    cfg = cell.test_device()
    if not cfg.calibrated_adc:
        return None
    train = cell.eval.get("adc_calibration") == "train"
    return {"split": "train" if train else "test",
            "images": min(cfg.adc_calibration_images, len(splits.train if train else splits.test))}


def _beta_search(cell: Cell, d: Path, splits, dev, notes: list[str]) -> tuple[float, dict, float, float]:
    """Train / score every β candidate (resumable per β, and per epoch); returns (chosen β, record, train seconds
    (earlier parts of resumed trainings included), those earlier parts' seconds)."""
    if not len(splits.val):  # before any candidate trains: the search scores them on the validation split
        symbol = search_symbol(searched_param(cell.method))
        raise ValueError(f"the {symbol} search has no validation images (val_fraction {cell.train_config(cell.betas[0]).val_fraction:g} "
                         f"of {len(splits.train) + len(splits.val)} training images rounds to 0): raise "
                         "train.val_fraction or the data's size")
    scores = []
    train_s = earlier_s = 0.0
    symbol = search_symbol(searched_param(cell.method))
    for i, beta in enumerate(cell.betas, start=1):
        bd = d / "beta" / fmt_beta(beta)
        score_file = bd / SCORE_FILE
        done = read_score(score_file, beta)
        if done is not None:
            scores.append(done)
            continue
        if score_file.is_file():  # damaged (not nvcim's atomic write): scored again, and said
            notes.append(f"cell {cell.id}: {score_file} cannot be read as a score of {symbol}={beta:g}: the candidate "
                         "is scored again")
        bd.mkdir(parents=True, exist_ok=True)
        tc = cell.train_config(beta)
        model, metrics, secs, before = _train_or_load(tc, bd / "checkpoint", splits, notes, cell.id,
                                                      f" {symbol}={beta:g} ({i} of {len(cell.betas)})")
        train_s += secs + before
        earlier_s += before
        rec = {"beta": float(beta), "status": metrics.get("status", "ok"), "val_mean": None, "val_std": None,
               "val_runs": cell.eval["val_runs"], "val_seed": cell.eval["val_seed"], "split": "val",
               "n_val": len(splits.val), "train_wall_time_s": metrics.get("wall_time_s"),
               "checkpoint": str(Path("beta") / fmt_beta(beta) / "checkpoint")}
        if _diverged_msg(metrics) is None:
            val = evaluate.monte_carlo_evaluate(model, splits.val, tc.device_cfg(), runs=cell.eval["val_runs"],
                                                seed=cell.eval["val_seed"], batch_size=cell.eval["batch_size"],
                                                device=dev, bn_calibration=_chip_calibration(cell, model, splits),
                                                adc_calibration=_adc_source(cell, tc.device_cfg(), splits))
            rec["val_mean"], rec["val_std"] = val.mean, (val.std if math.isfinite(val.std) else None)
        else:
            rec["error"] = _diverged_msg(metrics)
        evaluate.write_results_json(score_file, rec)
        scores.append(rec)
    eligible = [s for s in scores if s["val_mean"] is not None]
    if not eligible:
        raise CellDiverged(f"β search: every candidate diverged ({[s['beta'] for s in scores]})")
    best = max(eligible, key=lambda s: (s["val_mean"], s["beta"]))  # ties → larger β
    # "chosen_beta" holds the chosen value whatever the method searches; "parameter" says what it is (OVF's β,
    # tempered noise injection's logit_scale, CorrectNet's ortho_lambda)
    record = {"chosen_beta": best["beta"], "parameter": searched_param(cell.method),
              "criterion": "val_mc_mean", "tie_break": f"larger {searched_param(cell.method)}",
              "split": "val", "val_runs": cell.eval["val_runs"], "val_seed": cell.eval["val_seed"],
              "sigma": cell.sigma, "candidates": scores}
    return best["beta"], record, train_s, earlier_s


def run_cell(cell: Cell | Mapping, out_dir, threads: int) -> dict:
    """Run one cell into `out_dir` (train or resume, β search, test evaluation, result.json).

    Never raises for a failing cell: failed.json is written instead. Returns a one-cell summary
    {"id", "status": "ok"|"failed", "error", "wall_time_s", "mean" (first test σ), "beta", "warnings"}:
    "warnings", lines for the user that the sweep always shows: a reused checkpoint that could not be
    trusted (trained again), results recorded but implausible (non-finite logits, a mean below chance).
    """
    if not isinstance(cell, Cell):
        cell = Cell.from_dict(cell)
    t0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    d = prepare_cell_dir(out_dir, cell, threads)
    notes: list[str] = []  # warnings for the user (the sweep shows them even when quiet)
    with warnings.catch_warnings(record=True) as caught:  # the library's warnings too: the sweep shows each once,
        summary = _summary(cell, out_dir, d, threads, t0, notes, old_threads)  # not once per cell and process
    for w in caught:
        if issubclass(w.category, ImplausibleResultWarning):  # said with the cell's id: implausible_results
            continue
        text = " ".join(str(w.message).split()).removeprefix("nvcim: ")
        if text not in notes:
            notes.append(text)
    return summary


def _summary(cell: Cell, out_dir, d: Path, threads: int, t0: float, notes: list[str], old_threads: int) -> dict:
    """run_cell's work and its summary (notes: the warnings for the user, appended to)."""
    try:
        rec = _run_cell(cell, Path(out_dir), d, threads, t0, notes)
        results = rec.mc_results()
        implausible = implausible_results(results)
        if implausible:
            notes.append(f"cell {cell.id}: recorded, but check it: {implausible}")
        shown = next((r for r in results if cell.sigma is not None and abs(r.sigma - cell.sigma) < 1e-9),
                     results[0])  # its own σ where it was tested (vanilla: none)
        return {"id": cell.id, "status": "ok", "error": None, "wall_time_s": rec.cell["wall_time_s"],
                "mean": shown.mean, "sigma": shown.sigma, "beta": (rec.cell["beta_search"] or {}).get("chosen_beta"),
                "others": [[r.sigma, r.mean] for r in results if r is not shown],  # its other test σ: [σ, mean]
                "searched": searched_param(cell.method),  # what "beta" holds: OVF's β, tempered's logit_scale
                "warnings": notes}
    except Exception as exc:  # recorded, the sweep goes on
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        msg = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
        summary = record_failure(cell, out_dir, threads, msg, traceback.format_exc(), wall=time.perf_counter() - t0)
        return {**summary, "warnings": notes}
    finally:
        torch.set_num_threads(old_threads)


def implausible_results(results) -> str | None:
    """Why a cell's test results should not be scored without a look (None: nothing to say): per σ, chips with
    non-finite logits (counted as wrong) and a mean below chance (100 / classes %); "; "-joined, one line."""
    found = []
    for r in results:
        causes = []
        if r.nonfinite_runs:
            causes.append(f"non-finite logits in {r.nonfinite_runs} of {r.chips_scored} chips")
        chance = 100.0 / r.num_classes if r.num_classes else None
        if chance is not None and math.isfinite(r.mean) and r.mean < chance:
            causes.append(f"mean {r.mean:.2f}% is below chance {chance:g}%")
        elif not math.isfinite(r.mean):
            causes.append(f"mean {r.mean} is not a number")
        if causes:
            found.append(f"σ={r.sigma:g}: {', '.join(causes)}")
    return "; ".join(found) or None


def _run_cell(cell: Cell, out: Path, d: Path, threads: int, t0: float, notes: list[str]) -> dict:
    tc = cell.train_config(cell.betas[0] if cell.betas else None)
    splits = _splits(tc, cell.data_file)
    read = (splits.fingerprint or {}).get("sha256")
    if cell.data_file and read != cell.data_file:  # edited since the sweep expanded its cells (or another copy)
        raise ValueError(f"data set {cell.dataset}: the file read now (sha256 {str(read)[:12]}…) is not the one the "
                         f"sweep was started with ({cell.data_file[:12]}…): restore it, or run the sweep again")
    dev = train.resolve_device(tc.device)
    ckpt = d / "checkpoint"
    beta_record = None
    train_s = earlier_s = 0.0  # earlier_s: the parts of resumed trainings run before this process
    if cell.betas:
        beta, beta_record, train_s, earlier_s = _beta_search(cell, d, splits, dev, notes)
        tc = cell.train_config(beta)
        src = d / "beta" / fmt_beta(beta) / "checkpoint"
        have = None
        if (ckpt / CONFIG_FILE).is_file():
            try:
                method = read_checkpoint_config(ckpt).get("method")
            except CheckpointError:  # damaged: replaced by the chosen candidate's copy below
                method = None
            have = method.get(searched_param(cell.method)) if isinstance(method, dict) else None
        if have != beta:  # (none yet, damaged, or another candidate's): nvcim's files of it go, a user's file fails
            if ckpt.exists():  # the cell naming it (_drop_checkpoint)
                _drop_checkpoint(ckpt)
            if (src / CONFIG_FILE).is_file() and (src / WEIGHTS_FILE).is_file():
                link_or_copy_dir(src, ckpt)
            else:  # removed after an earlier finish (keep_beta_checkpoints = false): the chosen β trains again
                notes.append(f"cell {cell.id}: the chosen {searched_param(cell.method)}={beta:g}'s checkpoint is gone "
                             "(keep_beta_checkpoints = false) and the cell's is unusable: training it again")
    model, metrics, secs, before = _train_or_load(tc, ckpt, splits, notes, cell.id)
    train_s += secs + before
    earlier_s += before
    bad = _diverged_msg(metrics)
    if bad:
        raise CellDiverged(bad)
    t_eval = time.perf_counter()
    chips = ({"runs": cell.eval["runs"]} if cell.eval.get("target_ci") is None  # target-precision mode: [eval] target_ci
             else {k: cell.eval.get(k) for k in TARGET_KEYS})
    if (log := _cell_log(cell.id)) is not None:
        log(f"testing on {chips['runs'] if 'runs' in chips else 'enough'} chips × {len(splits.test):,} images at σ "
            + ", ".join(f"{s:g}" for s in cell.test_sigmas))
    results = evaluate.robustness_curve(model, splits.test, cell.test_device(), cell.test_sigmas, **chips,
                                        seed=cell.eval["seed"],
                                        batch_size=cell.eval["batch_size"], device=dev,
                                        bn_calibration=_chip_calibration(cell, model, splits),
                                        adc_calibration=_adc_source(cell, cell.test_device(), splits))
    eval_s = time.perf_counter() - t_eval
    payload = result_payload(cell, out, ckpt, tc, results, threads=threads, beta_search=beta_record,
                             wall=time.perf_counter() - t0 + earlier_s, train_s=train_s, eval_s=eval_s, metrics=metrics,
                             bn_recalibration=_calibration_record(cell, splits), adc_calibration=_adc_record(cell, splits))
    write_result_file(d / RESULT_FILE, payload)  # the cell is done from here on
    if cell.betas and not cell.eval["keep_beta_checkpoints"]:  # the candidates' weights: nvcim's files only
        for sub in sorted((d / "beta").glob("*/checkpoint")):
            try:
                _drop_checkpoint(sub)
            except ValueError:  # a user's file there: the folder is kept, and said
                notes.append(f"cell {cell.id}: {sub} was kept (keep_beta_checkpoints = false removed nvcim's files "
                             "of it): it holds files that are not nvcim's")
    return payload


def result_payload(cell: Cell, out: Path, ckpt: Path, tc, results, *, threads, beta_search, wall, train_s, eval_s,
                   metrics, bn_recalibration: dict | None = None, adc_calibration: dict | None = None) -> EvaluationFile:
    """result.json (`nvcim.evaluate.files.EvaluationFile`): "checkpoint" relative to the sweep dir,
    "device_config" at the first test σ (every result carries its own), "bn_recalibration" (None, or
    per-chip calibration as `nvcim eval` records it), one result per test σ, and "cell": {...} (with
    "device_model", the name as the spec gives it, only on a device-model axis)."""
    params = dict(cell.train_config().method_params) if not cell.betas else dict(tc.method_params)
    return EvaluationFile(
        results=list(results),
        checkpoint=ckpt.relative_to(out).as_posix(),
        checkpoint_config=read_checkpoint_config(ckpt),
        dataset=cell.dataset,
        split="test",
        device_config=cell.test_device().replace(sigma=cell.test_sigmas[0]).to_dict(),
        bn_recalibration=bn_recalibration,
        adc_calibration=adc_calibration,
        cell={
            "id": cell.id, "model": cell.model, "width": cell.width, "dataset": cell.dataset,
            "method": cell.method, "label": cell.label, "params": params, "sigma": cell.sigma, "seed": cell.seed,
            "test_sigmas": list(cell.test_sigmas), "threads": threads, "train_status": metrics.get("status", "ok"),
            "wall_time_s": wall, "train_wall_time_s": train_s, "eval_wall_time_s": eval_s,
            "beta_search": beta_search,
            **({} if cell.device_model is None else {"device_model": cell.device_model}),
        },
    )


def record_failure(cell: Cell, out_dir, threads: int, error: str, tb: str, *, wall: float | None = None) -> dict:
    """Write the cell's failed.json ({"kind": "sweep_cell_failed", "nvcim_version", "cell": its definition
    with threads and wall_time_s (None: it ended outside run_cell), "error", "traceback"}) and return its
    one-cell summary (see run_cell)."""
    d = cell_dir(out_dir, cell.id)
    d.mkdir(parents=True, exist_ok=True)
    write_result_file(d / FAILED_FILE, FailedCellFile(cell={**cell.to_dict(), "threads": threads, "wall_time_s": wall},
                                                      error=error, traceback=tb))
    return {"id": cell.id, "status": "failed", "error": error, "wall_time_s": 0.0 if wall is None else wall,
            "mean": None, "sigma": None, "beta": None}
