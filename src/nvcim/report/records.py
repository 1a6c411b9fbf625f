"""Reading results: every JSON file under one or more directories -> flat, labelled records (a ResultSet).

    rs = scan_results("runs/sweep")              # ResultSet(records, failures, skipped, verify_records)
    records = load_results("runs/sweep")         # flat dicts, one per (results file, test σ)

Inputs are JSON files found recursively under a directory:
  * kind "mc_eval" (`nvcim eval`, one sweep cell): checkpoint_config {model, data, method, device, seed, train
    (the recipe: epochs, batch size, optimizer, ...), metrics (history: per-epoch validation)}, dataset, results
    [MCResult dicts, one per test σ], optional cell {id, label, wall_time_s, beta_search, device_model (a
    sweep's device-model axis; records carry it, None without)};
  * kind "sweep_cell_failed": cell {id, ...}, error -> listed as failures;
  * kind "write_verify" (`nvcim eval --verify-fractions`): accuracy vs the fraction of write-verified
    weights of one model at one σ -> a figure and a table per model group (mean over seeds per fraction,
    and the fraction each seed needs to reach the file's target).
Other JSON (checkpoint config.json, anything without a known "kind") is skipped; a file that is not valid
JSON is an error naming it (or a warning with skip_bad=True).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from nvcim.evaluate import t_quantile
from nvcim.evaluate.files import (KINDS, DeviceMatrixFile, EvaluationFile, FailedCellFile, WriteVerifyFile,
                                  parse_result)
from nvcim.report.common import method_traits, num, sigma_specific
from nvcim.report.conflicts import (data_file_conflicts, evaluated_under_other_code, model_conflicts, verify_conflicts,
                                    name_unnamed_devices, plugin_code_conflicts, split_device_models)
from nvcim.report.labels import (RECIPE_KEYS, assign_labels, base_label, device_description, evaluation_suffix,
                                 recipe_suffix, trained_on, training_devices_differ)

KNOWN_KINDS = KINDS


@dataclass
class ResultSet:
    """What a results directory holds: flat records, failed sweep cells, and files skipped (path, reason)."""

    root: Path  # the first of `roots`
    records: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    verify_records: list[dict] = field(default_factory=list)  # one per (write_verify file, fraction)
    matrices: list[tuple[str, DeviceMatrixFile]] = field(default_factory=list)  # (file, device-model matrix)
    n_files: int = 0
    roots: list[Path] = field(default_factory=list)  # every directory / file read, in the order given
    notes: list[str] = field(default_factory=list)  # what the data make doubtful (mixed code, devices...): the report says it


HISTORY_KEYS = ("epoch", "val_clean", "val_noisy_mean", "train_loss")  # what a record keeps of each epoch


def training_recipe(train: Any) -> dict:
    """The RECIPE_KEYS a checkpoint's train config holds ({} when it has none: a model trained elsewhere), less those
    that did not act: momentum under Adam; the validation chips and interval when the last epoch is kept (nor chips
    when the clean one is). Models whose recipes differ are arms of their own (labels)."""
    if not isinstance(train, dict):
        return {}
    recipe = {k: train[k] for k in RECIPE_KEYS if k in train and isinstance(train[k], (int, float, str, type(None)))}
    if recipe.get("optimizer") not in (None, "sgd"):
        recipe.pop("momentum", None)
    if recipe.get("select") in ("last", "clean"):
        recipe.pop("val_runs", None)
    if recipe.get("select") == "last":
        recipe.pop("eval_every", None)
    if train.get("device") == "cpu":  # bf16 autocast is CUDA's only
        recipe.pop("amp", None)
    return recipe


def training_history(metrics: Any) -> list[dict]:
    """Per-epoch {epoch, val_clean, val_noisy_mean, train_loss} of a checkpoint's training (numbers or None);
    [] when it recorded none."""
    history = metrics.get("history") if isinstance(metrics, dict) else None
    if not isinstance(history, list):
        return []
    rows = [{k: num(h.get(k)) for k in HISTORY_KEYS} for h in history if isinstance(h, dict)]
    return [h for h in rows if h["epoch"] is not None]


_ACCURACIES = ("mean", "p1", "p5", "p10", "min", "max", "clean_accuracy", "quantized_accuracy")


def _check_values(r: Mapping[str, Any], where: str) -> None:
    """Refuse (ValueError, one line) a result whose numbers cannot be what nvcim wrote: an accuracy outside
    [0, 100] or not finite, a per-chip accuracy that is not a number, a negative σ, a CI that is not two numbers
    or not around the mean, a chip count below 1, a negative std or EKL. A damaged or hand-edited file would otherwise be reported as it is."""
    def bad(field, value, want):
        return ValueError(f"{where}.{field} = {value!r} is not {want} (a damaged or edited file); "
                          "use --skip-bad to skip it")

    if not math.isfinite(r["sigma"]) or r["sigma"] < 0:
        raise bad("sigma", r["sigma"], "a σ_d >= 0")
    for field in _ACCURACIES:
        value = r.get(field)
        if value is not None and (num(value) is None or not 0 <= value <= 100):
            raise bad(field, value, "an accuracy in [0, 100] %")
    per_run = r.get("per_run_accuracy")
    if per_run is not None:
        if not isinstance(per_run, list):
            raise bad("per_run_accuracy", per_run, "a list of accuracies")
        for j, a in enumerate(per_run):
            if num(a) is None or not 0 <= a <= 100:
                raise bad(f"per_run_accuracy[{j}]", a, "an accuracy in [0, 100] %")
    ci = r.get("ci95")
    if ci is not None and not (isinstance(ci, (list, tuple)) and len(ci) == 2 and all(
            c is None or (num(c) is not None and math.isfinite(c)) for c in ci)):
        raise bad("ci95", ci, "two numbers [low, high]")
    runs = r.get("runs")
    if runs is not None and (isinstance(runs, bool) or not isinstance(runs, int) or runs < 1):
        raise bad("runs", runs, "a chip count >= 1")
    for field in ("std", "ekl"):
        value = r.get(field)
        if value is not None and (num(value) is None or value < 0):
            raise bad(field, value, "a number >= 0")
    if ci is not None and all(c is not None for c in ci) and not ci[0] - 1e-6 <= r["mean"] <= ci[1] + 1e-6:
        raise bad("ci95", ci, f"an interval around its mean {r['mean']:g}")


def _check_matrix(rec: DeviceMatrixFile, path: Path) -> None:
    """`_check_values` on every cell's result of a device-model matrix file (the reader checked its grid)."""
    for i, row in enumerate(rec.cells):
        for j, cell in enumerate(row):
            r, where = cell["result"], f"{path}: cells[{i}][{j}].result"
            if num(r.get("sigma")) is None or num(r.get("mean")) is None:
                raise ValueError(f"{where} lacks a numeric 'sigma' or 'mean'; use --skip-bad to skip it")
            _check_values(r, where)


def _records_from_file(rec: EvaluationFile | WriteVerifyFile, path: Path, results: list | None = None) -> list[dict]:
    """Flat records of one mc_eval file (one per test σ); the reader (nvcim.evaluate.files) checked its structure."""
    results = rec.results if results is None else results
    ck = rec.checkpoint_config
    model_cfg = ck.get("model") or {}
    data_cfg = ck.get("data") or {}
    method_cfg = ck.get("method") or {}
    method_cfg = dict(method_cfg)
    device_cfg = ck.get("device") or {}
    cell = getattr(rec, "cell", None) if isinstance(getattr(rec, "cell", None), dict) else {}
    model = model_cfg.get("name") if isinstance(model_cfg, dict) else model_cfg
    dataset = rec.dataset or (data_cfg.get("name") if isinstance(data_cfg, dict) else data_cfg)
    method = str(method_cfg.pop("name", None) or "unknown")
    width = num(model_cfg.get("width")) if isinstance(model_cfg, dict) else None
    train_sigma = num(device_cfg.get("sigma")) if isinstance(device_cfg, dict) else None
    beta_search = cell.get("beta_search") if isinstance(cell.get("beta_search"), dict) else None
    chosen = None
    if beta_search:  # the sweep writes "chosen_beta"; "chosen" is accepted too
        chosen = num(beta_search.get("chosen_beta", beta_search.get("chosen")))
    traits = method_traits(method)
    searched = traits.search if traits is not None else None
    if chosen is not None and searched:
        method_cfg.setdefault(searched, chosen)
    option_names = {o.name for o in traits.options} if traits is not None else set()
    label_override = cell.get("label") or getattr(rec, "label", None)
    if label_override == method:  # a sweep labels plain arms with the method name: keep the readable default
        label_override = None
    seed = ck.get("seed")
    bn = rec.bn_recalibration if isinstance(rec.bn_recalibration, dict) else None
    recal = str(bn.get("weights") or "?") if bn else None  # "clean" | "each chip" | None
    bn_data = (f"{bn['images']} {bn.get('split') or ''} images".replace("  ", " ")
               if bn and num(bn.get("images")) is not None else None)  # (not recorded: alike with any)
    ck_path = _locate_checkpoint(rec.checkpoint, path)
    split = rec.split  # `nvcim eval --split val` results are not test results
    adc_cal = rec.adc_calibration if isinstance(rec.adc_calibration, dict) else {}
    adc_source = "train" if adc_cal.get("split") == "train" else None  # ADC ranges from training images
    eval_device = rec.device_config or {}
    # layers kept digital: the evaluation's own (nvcim eval --digital-layers), else the checkpoint's
    digital = list(rec.digital_layers if rec.digital_layers is not None else (ck.get("digital_layers") or []))
    quantized = eval_device.get("quantize") is not False  # `nvcim eval --no-quantize`: not the paper's chips
    tested_on = device_description(eval_device)  # what the evaluation's device sets (None: the paper's Gaussian)
    trained_under = device_description(device_cfg if isinstance(device_cfg, dict) else {})  # the checkpoint's
    out = []
    for i, r in enumerate(results):
        if not isinstance(r, dict) or num(r.get("sigma")) is None or num(r.get("mean")) is None:
            raise ValueError(f"{path}: results[{i}] lacks a numeric 'sigma' or 'mean'")
        _check_values(r, f"{path}: results[{i}]")
        ci = r.get("ci95")
        ci = [num(ci[0]), num(ci[1])] if isinstance(ci, (list, tuple)) and len(ci) == 2 else [None, None]
        per_run = r.get("per_run_accuracy")
        per_run = [float(a) for a in per_run if num(a) is not None] if isinstance(per_run, list) else []
        out.append(
            {
                "file": str(path),
                "checkpoint": rec.checkpoint,
                "checkpoint_path": ck_path,
                # which trained model this is, whatever its path: its checkpoint's config (metrics and history
                # included) as the file records it; None when it records none
                "model_print": _model_print(ck),
                "cell_id": cell.get("id"),
                "model": str(model or "unknown"),
                "width": width,
                "dataset": str(dataset or "unknown"),
                # the data set the model was trained on (`nvcim eval --dataset` may evaluate it on another)
                "train_dataset": (str(data_cfg["name"]) if isinstance(data_cfg, dict) and data_cfg.get("name")
                                  else data_cfg if isinstance(data_cfg, str) else None),
                # an npz: data set's file (sha256) the model was trained on, when it is the data set evaluated
                "data_file": _data_sha256(data_cfg) if isinstance(data_cfg, dict) and data_cfg.get("name") == dataset
                else None,
                # the plugins' code the model was built with (nvcim.plugins.fingerprint), when it was built with plugins
                "plugin_code": ck.get("plugins_sha256") if isinstance(ck.get("plugins_sha256"), str) else None,
                "eval_plugin_code": rec.plugins_sha256,  # ... and the code it was evaluated with (None: not recorded)
                "method": method,
                "method_params": method_cfg,
                "beta": num(method_cfg.get("beta")) if searched == "beta" else None,
                "logit_scale": num(method_cfg.get("logit_scale")) if "logit_scale" in option_names else None,
                "beta_search": beta_search,
                "label_override": str(label_override) if label_override else None,
                # the device model's name (a sweep's axis, `nvcim eval --device-model rram4`), else what it sets
                "device_model": (device_name(cell["device_model"]) if cell.get("device_model")
                                 else device_name(rec.device_model) if rec.device_model and tested_on
                                 else tested_on),
                "device_detail": tested_on or "gaussian",  # what the device model sets
                # whether the file names its device model (a sweep's axis, `nvcim eval --device-model`): an unnamed
                # result takes the name others give its device (conflicts.name_unnamed_devices)
                "device_named": bool(cell.get("device_model") or rec.device_model),
                "device_bits": (eval_device.get("weight_bits"), eval_device.get("device_bits")),  # (M, K) as recorded
                # trained and evaluated on the paper's i.i.d. Gaussian device: only then comparable with its figures
                "gaussian_device": tested_on is None and trained_under is None,
                # the device the model trained under ("gaussian": the paper's), None for a model trained without noise
                # (vanilla: the device its checkpoint names did not act); models of one arm trained under different
                # devices are arms of their own (labels.assign_labels)
                "train_device": ((trained_under or "gaussian")
                                 if sigma_specific({"method": method, "beta_search": beta_search}) else None),
                "label": None,  # set by assign_labels
                "arm": None,  # the label without the training-recipe suffix (assign_labels)
                "recipe": training_recipe(ck.get("train")),  # {epochs, batch_size, ...}: the training budget
                "recipe_label": "",  # e.g. "12 epochs" when recipes differ in the report (assign_labels)
                "history": training_history(ck.get("metrics")),
                # nvcim train stopped on non-finite weights or loss and kept its best validated (or initial) weights:
                # a failed seed, as a sweep's diverged cell is (matched_points), never averaged in
                "diverged": isinstance(ck.get("metrics"), dict) and ck["metrics"].get("status") == "diverged",
                "bn_recalibration": recal,
                "bn_data": bn_data,  # "3600 train images": what the statistics were recalibrated on
                "images_sha256": r.get("images_sha256"),  # which test images (a set) and, under read noise, how many
                "read_batch": r.get("read_batch"),  # shared one read: results differing in either are not paired
                "adc_calibration": adc_source,
                "digital_layers": digital,
                "split": split,
                "quantized": quantized,
                "train_sigma": train_sigma,
                "test_sigma": float(r["sigma"]),
                "seed": seed,
                "mc_seed": r.get("seed"),
                "mean": float(r["mean"]),
                "std": num(r.get("std")),
                "ci95": ci,
                "ci_half": _ci_half(r, ci),
                "per_run_accuracy": per_run,
                "p1": num(r.get("p1")),
                "p5": num(r.get("p5")),
                "p10": num(r.get("p10")),
                "min": num(r.get("min")),
                "max": num(r.get("max")),
                "ekl": num(r.get("ekl")),
                "ekl_n": r.get("ekl_n"),
                "runs": int(r["runs"]) if num(r.get("runs")) is not None else len(per_run),
                # target-precision results (nvcim.evaluate.adaptive): R chips of N images for the mean; their
                # per_run_accuracy, hence every pooled percentile, holds only the chips scored on the full test set
                "images_per_chip": r.get("images_per_chip"),
                "percentiles_from": r.get("percentiles_from") or "all_chips",
                "n_samples": r.get("n_samples"),
                "clean_accuracy": num(r.get("clean_accuracy")),
                "quantized_accuracy": num(r.get("quantized_accuracy")),
                "wall_time_s": num(r.get("wall_time_s")),
                "n_test_sigmas": len(results),
                # implausible values, marked in the tables (nvcim.report.flags): chips with NaN / inf logits, and the
                # width of the logits (chance = 100 / num_classes %; None: unknown, results written before it)
                "nonfinite_runs": int(r["nonfinite_runs"]) if num(r.get("nonfinite_runs")) is not None else 0,
                "chips_scored": _chips_scored(r, per_run),  # what nonfinite_runs counts among
                "num_classes": int(r["num_classes"]) if num(r.get("num_classes")) is not None else None,
            }
        )
    return out


def device_name(name: Any) -> str:
    """A device model's name as reports show it: a device file by its file name (dev.toml, ./dev.toml and
    /abs/dev.toml are one device model; two different files of one name are told apart by
    conflicts.split_device_models), a preset by its name."""
    text = str(name)
    return Path(text).name if text.lower().endswith(".toml") else text


def _data_sha256(data_cfg: Any) -> str | None:
    """The sha256 of the npz: file a checkpoint's data section records (None: a registered data set, or not recorded)."""
    file = data_cfg.get("file") if isinstance(data_cfg, dict) else None
    sha = file.get("sha256") if isinstance(file, dict) else None
    return sha if isinstance(sha, str) and sha else None


def _chips_scored(r: Mapping, per_run: list) -> int:
    """Every chip a result scored (nvcim.evaluate.results.MCResult.chips_scored): its runs, and for a
    target-precision result the full-set chips beside them."""
    runs = int(r["runs"]) if num(r.get("runs")) is not None else len(per_run)
    full, images, n = num(r.get("full_set_chips")), num(r.get("images_per_chip")), num(r.get("n_samples"))
    if r.get("target_ci") is None or full is None:
        return runs
    return int(full) + (runs if images is not None and n is not None and images < n else 0)


def _ci_half(r: Mapping, ci: list) -> float | None:
    """The unclipped half-width of a result's 95 % CI (its ci95 bounds are clipped to [0, 100], so (hi − lo) / 2
    understates it near the bounds): the recorded one (target-precision results), else t_{0.975, R−1}·std/√R."""
    half, std, runs = num(r.get("ci_half_width")), num(r.get("std")), num(r.get("runs"))
    if half is not None:
        return half
    if std is not None and runs is not None and runs >= 2:
        return float(t_quantile(0.975, int(runs) - 1)) * std / math.sqrt(runs)
    return (ci[1] - ci[0]) / 2 if ci[0] is not None and ci[1] is not None else None


def scan_results(path, skip_bad: bool = False, warn=None) -> ResultSet:
    """Read every *.json under `path` (hidden files and folders aside): a directory or one results file, or a
    list of them (e.g. the output directories of several sweeps, reported together; a file reached twice
    is read once).

    FileNotFoundError if a path does not exist; ValueError naming the file for invalid JSON or a malformed
    mc_eval file (with skip_bad: `warn(message)` and skip it). Files of unknown kind are skipped quietly.
    """
    roots = [Path(p) for p in ([path] if isinstance(path, (str, Path)) else path)]
    if not roots:
        raise ValueError("no results directory given")
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"results directory {root} does not exist")
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    files, seen = [], set()
    for root in roots:
        found = [] if root.is_file() else sorted(p for p in root.rglob("*.json") if p.is_file()
                                                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
        for f in [root] if root.is_file() else found:  # hidden paths: leftovers of interrupted writes
            if f.resolve() not in seen:
                seen.add(f.resolve())
                files.append(f)
    rs = ResultSet(root=roots[0], n_files=len(files), roots=roots)
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                payload = json.load(fh)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            msg = f"{f}: not a readable JSON results file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            if not skip_bad:
                raise ValueError(msg + "; use --skip-bad to skip it") from None
            warn(f"skipping {msg}")
            rs.skipped.append((str(f), "invalid JSON"))
            continue
        kind = payload.get("kind") if isinstance(payload, dict) else None
        if kind not in KNOWN_KINDS:
            rs.skipped.append((str(f), f"kind {kind!r}"))
            continue
        try:
            try:
                rec = parse_result(payload, str(f))  # the one reader of result files: structure checked
                if isinstance(rec, FailedCellFile):
                    err = rec.error.strip()
                    rs.failures.append({"cell_id": str(rec.cell.get("id", f.stem)),
                                        "error": err.splitlines()[0] if err else "", "file": str(f), "cell": rec.cell})
                elif isinstance(rec, DeviceMatrixFile):
                    _check_matrix(rec, f)
                    rs.matrices.append((str(f), rec))
                elif isinstance(rec, WriteVerifyFile):
                    rs.verify_records.extend(_verify_records(rec, f))
                else:
                    rs.records.extend(_records_from_file(rec, f))
            except (TypeError, AttributeError, KeyError) as e:  # a field of an unexpected type
                raise ValueError(f"{f}: malformed mc_eval file ({type(e).__name__}: {e}); "
                                 "use --skip-bad to skip it") from None
        except ValueError as e:
            if not skip_bad:
                raise
            warn(f"skipping {e}")
            rs.skipped.append((str(f), f"malformed {kind}"))
    name_unnamed_devices(rs.records + rs.verify_records)
    device_msgs = split_device_models(rs.records + rs.verify_records)
    assign_labels(rs.records, rs.verify_records)
    _label_verify_records(rs.verify_records, rs.records)
    for msg in device_msgs + model_conflicts(rs.records) + verify_conflicts(rs.verify_records) + \
            data_file_conflicts(rs.records) + \
            plugin_code_conflicts(rs.records) + evaluated_under_other_code(rs.records):
        warn(msg)
        rs.notes.append(msg)
    return rs


def _verify_records(rec: WriteVerifyFile, path: Path) -> list[dict]:
    """Records of one "write_verify" file: an mc_eval record per fraction, plus the write-verify fields."""
    points, wv = rec.points, rec.write_verify
    if not points:
        raise ValueError(f"{path}: write_verify file has no 'points' list")
    for i, p in enumerate(points):
        r = p["result"]
        if num(r.get("sigma")) is None or num(r.get("mean")) is None:
            raise ValueError(f"{path}: results[{i}] lacks a numeric 'sigma' or 'mean'")
    recs = _records_from_file(rec, path, [p["result"] for p in points])
    for r, p in zip(recs, points):
        if num(p.get("fraction")) is None:
            raise ValueError(f"{path}: a write_verify point lacks a numeric 'fraction'")
        r.update({"verify_fraction": float(p["fraction"]), "verified_devices": p.get("verified_devices"),
                  "verify_by": str(wv.get("by") or "?"), "residual_sigma": num(wv.get("residual_sigma")),
                  "verify_target": num(wv.get("target")), "verify_stat": str(wv.get("stat") or "mean")})
    return recs


def _label_verify_records(verify_records: list[dict], records: Sequence[dict]) -> None:
    """A write-verify record takes the label its checkpoint has among the Monte Carlo results (so that a sweep's
    arms keep their names); a checkpoint seen nowhere else gets its method's base label. Write-verify files
    never take part in labelling the Monte Carlo arms."""
    by_ckpt = {r["checkpoint_path"]: _trained_label(r) for r in records if r["checkpoint_path"]}
    arms: dict[tuple, list[dict]] = {}  # by arm: models of other training devices are curves of their own, as among
    for r in verify_records:  # the Monte Carlo results (labels.assign_labels), whether or not those evaluated them
        arms.setdefault((r["model"], r["width"], r["dataset"], r["method"], r["recipe_label"]), []).append(r)
    name_device = {id(r) for recs in arms.values() if training_devices_differ(recs) for r in recs}
    for r in verify_records:
        label = by_ckpt.get(r["checkpoint_path"])
        if label is None or (id(r) in name_device and trained_on(r) not in label):
            label = ((r["label_override"] or base_label(r["method"], r["method_params"]))
                     + (trained_on(r) if id(r) in name_device else "") + recipe_suffix(r) + evaluation_suffix(r))
        else:  # the model's name among the Monte Carlo arms, evaluated as this file says (its own device)
            label += evaluation_suffix(r)
        r["label"] = label


def _trained_label(r: dict) -> str:
    """A Monte Carlo record's label without how it was evaluated (" [stuck-chen2015]"): what names its model."""
    ev = r.get("evaluation") or ""
    return r["label"][: len(r["label"]) - len(ev)] if ev and r["label"].endswith(ev) else r["label"]


def _locate_checkpoint(ckpt: Any, path: Path) -> str | None:
    """The checkpoint a results file names, as an absolute path when it is found: a sweep names it relative
    to the sweep directory (an ancestor of the file), `nvcim eval` as given on its command line."""
    if not isinstance(ckpt, str) or not ckpt:
        return None
    for base in (*path.resolve().parents, Path.cwd()):
        if (base / ckpt).exists():
            return str((base / ckpt).resolve())
    return ckpt


def _model_print(config: Any) -> str | None:
    """A digest of a checkpoint's config as a results file records it (None: it records none)."""
    ok = isinstance(config, dict) and config
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest() if ok else None


def device_models_table(records: Sequence[dict]):
    """[(device model as the arms name it, what it sets)] of the records' device models, or [] when none."""
    seen = {r["device_model"]: r["device_detail"] for r in records
            if r.get("device_model") and r["device_model"] != r["device_detail"]}  # a name, not the fields themselves
    return sorted(seen.items())


def load_results(path, skip_bad: bool = False) -> list[dict]:
    """Flat, labelled records (one per results file and test σ) of every mc_eval file under `path`."""
    return scan_results(path, skip_bad=skip_bad).records
