"""Collect Monte Carlo results into paper-style figures, tables and a self-contained report (SPEC §4, §6).

    rs = scan_results("runs/sweep")              # ResultSet(records, failures, skipped)
    records = load_results("runs/sweep")         # flat dicts, one per (results file, test σ)
    written = write_report(rs, "runs/sweep/report", fmt="png", title="VGG-8 MNIST")

Inputs are JSON files found recursively under a directory:
  * kind "mc_eval" (`nvcim eval`, one sweep cell): checkpoint_config {model, data, method, device, seed},
    dataset, results [MCResult dicts, one per test σ], optional cell {id, label, wall_time_s, beta_search};
  * kind "sweep_cell_failed": cell {id, ...}, error -> listed as failures;
  * kind "write_verify" (`nvcim eval --verify-fractions`): accuracy vs the fraction of write-verified
    weights of one model at one σ -> a figure and a table per model group (mean over seeds per fraction,
    and the fraction each seed needs to reach the file's target).
Other JSON (checkpoint config.json, anything without a known "kind") is skipped; a file that is not valid
JSON is an error naming it (or a warning with skip_bad=True).

Records are labelled so that ablation arms are distinct lines: vanilla -> "vanilla"; noise injection ->
"noise injection" (logit scale 1) or "noise injection ×s"; OVF -> "OVF", or "OVF β=1e-3" when several
fixed hyper-parameters (β, N, ...) of one (model, dataset) are compared at the same training σ (a β chosen
by a sweep's β search keeps "OVF"); a cell's "label" field overrides all of this. Results evaluated off
the standard setting are arms of their own, with a suffix on the label: recalibrated BatchNorm
statistics ("bn_recalibration" in the file) " (BN per chip)" or " (BN: clean)", another split than test
(`nvcim eval --split val`) " (val split)", unquantized chips (`--no-quantize`) " (unquantized)".

The matched setting (paper Fig. 3): every model is trained and tested at σ_d, so a point uses the
records whose test σ equals their training σ (vanilla: every test σ of the vanilla models). A point is
the mean over seeds of each model's Monte Carlo mean; its 95% CI is over seeds (Student t) when there are
≥ 2 seeds, else the Monte Carlo CI of the single model. Worst-case statistics (p1, p5, min) are over all
the point's chips pooled (n seeds × R runs). A model is non-converged when its mean is more than 5 points
below the mean over the seeds (SPEC §4). Published values (reference.paper_match) stand only beside arms
that are the paper's method (reference.is_paper_recipe): an ablation arm such as noise injection ×1/4
gets no "paper" value and no dashed curve.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from nvcim.fileio import atomic_write_bytes

import numpy as np

from nvcim import reference

__all__ = [
    "KNOWN_KINDS",
    "ResultSet",
    "scan_results",
    "load_results",
    "assign_labels",
    "matched_points",
    "robustness_curves",
    "write_report",
    "FIGURE_FORMATS",
]

KNOWN_KINDS = ("mc_eval", "sweep_cell_failed", "write_verify")
FIGURE_FORMATS = ("png", "svg", "pdf")
CONVERGENCE_THRESHOLD = 5.0  # percentage points below the mean over seeds (SPEC §4)
_METHOD_ORDER = {"vanilla": 0, "noise_injection": 1, "ovf": 2}
_PARAM_SYMBOL = {"beta": "β", "n_variational": "N", "logit_scale": "scale", "delta_sigma": "Δσ"}
_SIGMA_TOL = 1e-9


# ---- small helpers ---------------------------------------------------------------------------------
def _num(v: Any) -> float | None:
    """A finite float or None."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt_param(v: Any) -> str:
    """1e-3 for 0.001, 0.25 for 0.25, 3 for 3: compact numbers for labels."""
    f = _num(v)
    if f is None or isinstance(v, (list, tuple, dict, str)):
        return str(v) if not isinstance(v, (list, tuple, dict)) else json.dumps(v)
    if f == int(f) and abs(f) < 1e4:
        return str(int(f))
    if abs(f) < 1e-2 or abs(f) >= 1e4:
        mant, exp = f"{f:.6e}".split("e")
        mant = mant.rstrip("0").rstrip(".")
        return f"{mant}e{int(exp)}"
    return f"{f:g}"


def _fmt(v: Any, digits: int = 2) -> str:
    f = _num(v)
    return "—" if f is None else f"{f:.{digits}f}"


def _fmt_ekl(v: Any) -> str:
    f = _num(v)
    return "—" if f is None else f"{f:.4g}"


def _fmt_sigma(s: float) -> str:
    return f"{s:g}"


def _t975(df: int) -> float:
    """0.975 quantile of Student's t with df degrees of freedom."""
    try:
        from nvcim.evaluate import t_quantile
    except ImportError:  # evaluate not importable: tabulated values, then a Cornish-Fisher expansion
        table = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281)
        if df <= len(table):
            return table[df - 1]
        z = 1.959963984540054
        return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    return float(t_quantile(0.975, df))


def _convergence(means: dict, threshold: float = CONVERGENCE_THRESHOLD) -> dict:
    try:
        from nvcim.evaluate import convergence_summary
    except ImportError:
        vals = [float(v) for v in means.values()]
        mom = sum(vals) / len(vals)
        bad = [k for k, v in means.items() if float(v) < mom - threshold]
        return {"mean_of_means": mom, "threshold": threshold, "non_converged": bad,
                "n_non_converged": len(bad), "n_models": len(vals)}
    return convergence_summary(means, threshold=threshold)


def _slug(*parts: Any) -> str:
    s = "_".join(str(p) for p in parts if p not in (None, ""))
    return "".join(c if c.isalnum() or c in "-." else "_" for c in s).strip("_") or "x"


# ---- loading ---------------------------------------------------------------------------------------
@dataclass
class ResultSet:
    """What a results directory holds: flat records, failed sweep cells, and files skipped (path, reason)."""

    root: Path  # the first of `roots`
    records: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    verify_records: list[dict] = field(default_factory=list)  # one per (write_verify file, fraction)
    n_files: int = 0
    roots: list[Path] = field(default_factory=list)  # every directory / file read, in the order given


def _records_from_payload(payload: dict, path: Path) -> list[dict]:
    """Flat records of one "mc_eval" payload (one per test σ); ValueError naming the file if malformed."""
    results = payload.get("results")
    if not isinstance(results, list) or not results:
        raise ValueError(f"{path}: mc_eval results file has no 'results' list")
    ck = payload.get("checkpoint_config") or {}
    if not isinstance(ck, dict):
        raise ValueError(f"{path}: 'checkpoint_config' is not an object")
    model_cfg = ck.get("model") or {}
    data_cfg = ck.get("data") or {}
    method_cfg = ck.get("method") or {}
    for key, value, kinds in (("model", model_cfg, (dict, str)), ("data", data_cfg, (dict, str)),
                              ("method", method_cfg, (dict,)), ("device", ck.get("device") or {}, (dict,))):
        if not isinstance(value, kinds):
            raise ValueError(f"{path}: 'checkpoint_config.{key}' is a {type(value).__name__}, not an object")
    method_cfg = dict(method_cfg)
    device_cfg = ck.get("device") or {}
    cell = payload.get("cell") if isinstance(payload.get("cell"), dict) else {}
    model = model_cfg.get("name") if isinstance(model_cfg, dict) else model_cfg
    dataset = payload.get("dataset") or (data_cfg.get("name") if isinstance(data_cfg, dict) else data_cfg)
    method = str(method_cfg.pop("name", None) or "unknown")
    width = _num(model_cfg.get("width")) if isinstance(model_cfg, dict) else None
    train_sigma = _num(device_cfg.get("sigma")) if isinstance(device_cfg, dict) else None
    beta_search = cell.get("beta_search") if isinstance(cell.get("beta_search"), dict) else None
    chosen = None
    if beta_search:  # the sweep writes "chosen_beta"; "chosen" is accepted too
        chosen = _num(beta_search.get("chosen_beta", beta_search.get("chosen")))
    if chosen is not None and method == "ovf":
        method_cfg.setdefault("beta", chosen)
    label_override = cell.get("label") or payload.get("label")
    if label_override == method:  # a sweep labels plain arms with the method name: keep the readable default
        label_override = None
    seed = ck.get("seed")
    recal = payload.get("bn_recalibration")
    recal = str(recal.get("weights") or "?") if isinstance(recal, dict) else None  # "clean" | "each chip" | None
    ck_path = _locate_checkpoint(payload.get("checkpoint"), path)
    split = str(payload.get("split") or "test")  # `nvcim eval --split val` results are not test results
    eval_device = payload.get("device_config") if isinstance(payload.get("device_config"), dict) else {}
    quantized = eval_device.get("quantize") is not False  # `nvcim eval --no-quantize`: not the paper's chips
    out = []
    for i, r in enumerate(results):
        if not isinstance(r, dict) or _num(r.get("sigma")) is None or _num(r.get("mean")) is None:
            raise ValueError(f"{path}: results[{i}] lacks a numeric 'sigma' or 'mean'")
        ci = r.get("ci95")
        ci = [_num(ci[0]), _num(ci[1])] if isinstance(ci, (list, tuple)) and len(ci) == 2 else [None, None]
        per_run = r.get("per_run_accuracy")
        per_run = [float(a) for a in per_run if _num(a) is not None] if isinstance(per_run, list) else []
        out.append(
            {
                "file": str(path),
                "checkpoint": payload.get("checkpoint"),
                "checkpoint_path": ck_path,
                "cell_id": cell.get("id"),
                "model": str(model or "unknown"),
                "width": width,
                "dataset": str(dataset or "unknown"),
                "method": method,
                "method_params": method_cfg,
                "beta": _num(method_cfg.get("beta")) if method == "ovf" else None,
                "logit_scale": _num(method_cfg.get("logit_scale")) if method == "noise_injection" else None,
                "beta_search": beta_search,
                "label_override": str(label_override) if label_override else None,
                "label": None,  # set by assign_labels
                "bn_recalibration": recal,
                "split": split,
                "quantized": quantized,
                "train_sigma": train_sigma,
                "test_sigma": float(r["sigma"]),
                "seed": seed,
                "mc_seed": r.get("seed"),
                "mean": float(r["mean"]),
                "std": _num(r.get("std")),
                "ci95": ci,
                "per_run_accuracy": per_run,
                "p1": _num(r.get("p1")),
                "p5": _num(r.get("p5")),
                "p10": _num(r.get("p10")),
                "min": _num(r.get("min")),
                "max": _num(r.get("max")),
                "ekl": _num(r.get("ekl")),
                "ekl_n": r.get("ekl_n"),
                "runs": int(r["runs"]) if _num(r.get("runs")) is not None else len(per_run),
                "n_samples": r.get("n_samples"),
                "clean_accuracy": _num(r.get("clean_accuracy")),
                "quantized_accuracy": _num(r.get("quantized_accuracy")),
                "wall_time_s": _num(r.get("wall_time_s")),
                "n_test_sigmas": len(results),
            }
        )
    return out


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
        if kind == "sweep_cell_failed":
            cell = payload.get("cell") if isinstance(payload.get("cell"), dict) else {}
            err = str(payload.get("error") or "").strip()
            rs.failures.append({"cell_id": str(cell.get("id", f.stem)), "error": err.splitlines()[0] if err else "",
                                "file": str(f), "cell": cell})
            continue
        try:
            try:
                if kind == "write_verify":
                    rs.verify_records.extend(_verify_records(payload, f))
                    continue
                rs.records.extend(_records_from_payload(payload, f))
            except (TypeError, AttributeError, KeyError) as e:  # a field of an unexpected type
                raise ValueError(f"{f}: malformed mc_eval file ({type(e).__name__}: {e}); "
                                 "use --skip-bad to skip it") from None
        except ValueError as e:
            if not skip_bad:
                raise
            warn(f"skipping {e}")
            rs.skipped.append((str(f), "malformed mc_eval"))
    assign_labels(rs.records)
    _label_verify_records(rs.verify_records, rs.records)
    for msg in _model_conflicts(rs.records):
        warn(msg)
    return rs


def _verify_records(payload: dict, path: Path) -> list[dict]:
    """Records of one "write_verify" file: an mc_eval record per fraction, plus the write-verify fields."""
    points = payload.get("points")
    wv = payload.get("write_verify") if isinstance(payload.get("write_verify"), dict) else {}
    if not isinstance(points, list) or not points or not all(isinstance(p, dict) for p in points):
        raise ValueError(f"{path}: write_verify file has no 'points' list")
    recs = _records_from_payload({**payload, "results": [p.get("result") for p in points]}, path)
    for r, p in zip(recs, points):
        if _num(p.get("fraction")) is None:
            raise ValueError(f"{path}: a write_verify point lacks a numeric 'fraction'")
        r.update({"verify_fraction": float(p["fraction"]), "verified_devices": p.get("verified_devices"),
                  "verify_by": str(wv.get("by") or "?"), "residual_sigma": _num(wv.get("residual_sigma")),
                  "verify_target": _num(wv.get("target")), "verify_stat": str(wv.get("stat") or "mean")})
    return recs


def _label_verify_records(verify_records: list[dict], records: Sequence[dict]) -> None:
    """A write-verify record takes the label its checkpoint has among the Monte Carlo results (so that a sweep's
    arms keep their names); a checkpoint seen nowhere else gets its method's base label. Write-verify files
    never take part in labelling the Monte Carlo arms."""
    by_ckpt = {r["checkpoint_path"]: r["label"] for r in records if r["checkpoint_path"]}
    for r in verify_records:
        label = by_ckpt.get(r["checkpoint_path"])
        if label is None:
            label = (r["label_override"] or _base_label(r["method"], r["method_params"])) + _evaluation_suffix(r)
        elif _evaluation_suffix(r) and not label.endswith(_evaluation_suffix(r)):
            label += _evaluation_suffix(r)
        r["label"] = label


def _locate_checkpoint(ckpt: Any, path: Path) -> str | None:
    """The checkpoint a results file names, as an absolute path when it is found: a sweep names it relative
    to the sweep directory (an ancestor of the file), `nvcim eval` as given on its command line."""
    if not isinstance(ckpt, str) or not ckpt:
        return None
    for base in (*path.resolve().parents, Path.cwd()):
        if (base / ckpt).exists():
            return str((base / ckpt).resolve())
    return ckpt


def _same_checkpoint(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return a == b
    if Path(a).is_absolute() and Path(b).is_absolute():
        return a == b
    a, b = Path(a).as_posix().rstrip("/"), Path(b).as_posix().rstrip("/")
    return a == b or a.endswith("/" + b) or b.endswith("/" + a)  # relative vs absolute spelling


def _model_conflicts(records: Sequence[dict]) -> list[str]:
    """Messages for two different checkpoints that would count as the same model of one point (same
    arm, training and test σ, seed): a point keeps one model per seed (the one with the most chips,
    then the last file by name), so the other is left out; say so instead of dropping it silently."""
    seen: dict[tuple, dict] = {}
    msgs = []
    for r in sorted(records, key=lambda r: r["file"]):
        if r["seed"] is None:
            continue
        key = (*group_key(r), r["label"], _sigma_key(r["train_sigma"]), _sigma_key(r["test_sigma"]), str(r["seed"]))
        first = seen.setdefault(key, r)
        if first is not r and not _same_checkpoint(first["checkpoint_path"], r["checkpoint_path"]):
            msgs.append(f"{first['file']} and {r['file']} hold different checkpoints of the same arm "
                        f"({r['label']}, σ_d {fmt_param(r['test_sigma'])}, seed {r['seed']}): the report keeps "
                        "one model per seed (most chips, then the last file); report them separately")
    return msgs


def load_results(path, skip_bad: bool = False) -> list[dict]:
    """Flat, labelled records (one per results file and test σ) of every mc_eval file under `path`."""
    return scan_results(path, skip_bad=skip_bad).records


# ---- labels ----------------------------------------------------------------------------------------
def _base_label(method: str, params: dict) -> str:
    censor = _num(params.get("censor"))
    rcn = f" RCN s={fmt_param(censor)}" if censor is not None else ""  # right-censored training noise
    if method == "vanilla":
        return "vanilla"
    if method == "noise_injection":
        scale = _num(params.get("logit_scale"))
        return ("noise injection" if scale is None or scale == 1 else f"noise injection ×{fmt_param(scale)}") + rcn
    if method == "ovf":
        return "OVF" + rcn
    return method.replace("_", " ")


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True, default=str)


def assign_labels(records: list[dict]) -> None:
    """Set record["label"] in place (see the module docstring for the rule)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("label_override"):
            r["label"] = r["label_override"] + _evaluation_suffix(r)
            continue
        groups.setdefault((r["model"], r["width"], r["dataset"], r["method"]), []).append(r)
    for (_, _, _, method), recs in groups.items():
        ignore = {"logit_scale", "censor"} if method == "noise_injection" else {"censor"}  # in the base label
        # per training σ: the distinct fixed-hyper-parameter sets, and whether a β search was there too
        by_sigma: dict[Any, dict] = {}
        for r in recs:
            slot = by_sigma.setdefault(_sigma_key(r["train_sigma"]), {"fixed": {}, "searched": False})
            if r["beta_search"]:
                slot["searched"] = True
            else:
                params = {k: v for k, v in r["method_params"].items() if k not in ignore}
                slot["fixed"][_hashable(params)] = params
        varying: set[str] = set()
        conflict = False
        for slot in by_sigma.values():
            fixed = list(slot["fixed"].values())
            if len(fixed) > 1:
                conflict = True
                keys = set().union(*fixed)
                varying |= {k for k in keys if len({_hashable(p.get(k)) for p in fixed}) > 1}
            elif fixed and slot["searched"]:
                conflict = True
        if conflict and not varying:  # fixed arm vs β-searched arm: name the fixed arm's β (or all params)
            allp = [p for s in by_sigma.values() for p in s["fixed"].values()]
            varying = {"beta"} if method == "ovf" else (set().union(*allp) if allp else set())
        order = ["beta", "n_variational"] + sorted(varying - {"beta", "n_variational"})
        shown = [k for k in order if k in varying]
        for r in recs:
            label = _base_label(method, r["method_params"])
            if shown and not r["beta_search"]:
                parts = [f"{_PARAM_SYMBOL.get(k, k)}={fmt_param(r['method_params'].get(k))}"
                         for k in shown if k in r["method_params"]]
                if parts:
                    label = f"{label} {', '.join(parts)}"
            r["label"] = label + _evaluation_suffix(r)


def _evaluation_suffix(r: Mapping) -> str:
    """Results evaluated off the standard setting are arms of their own: recalibrated BatchNorm statistics
    (`nvcim eval --recalibrate-bn*`), another split than test (`--split val`), unquantized chips (`--no-quantize`)."""
    parts = []
    how = r.get("bn_recalibration")
    if how:
        parts.append("BN per chip" if how == "each chip" else f"BN: {how}")
    if r.get("split", "test") != "test":
        parts.append(f"{r['split']} split")
    if r.get("quantized") is False:
        parts.append("unquantized")
    return f" ({', '.join(parts)})" if parts else ""


def is_standard_evaluation(r: Mapping) -> bool:
    """Evaluated as the paper evaluates: test split, quantized chips, the model's stored BatchNorm statistics."""
    return not r.get("bn_recalibration") and r.get("split", "test") == "test" and r.get("quantized") is not False


# ---- aggregation -----------------------------------------------------------------------------------
def _sigma_key(s: float | None) -> float | None:
    return None if s is None else round(float(s), 6)


def group_key(r: dict) -> tuple:
    return (r["model"], r["width"], r["dataset"])


def group_title(key: tuple) -> str:
    model, width, dataset = key
    w = f" (width {fmt_param(width)})" if width is not None and width != 1 else ""
    return f"{model}{w} / {dataset}"


def _label_sort_key(label: str, method: str) -> tuple:
    return (_METHOD_ORDER.get(method, 9), method, label)


def _dedupe_by_model(recs: list[dict]) -> list[dict]:
    """One record per trained model (seed, or checkpoint when the seed is unknown): most runs, then last file."""
    best: dict[Any, dict] = {}
    for r in sorted(recs, key=lambda r: r["file"]):
        ident = r["seed"] if r["seed"] is not None else (r["checkpoint"] or r["file"])
        if ident not in best or r["runs"] >= best[ident]["runs"]:
            best[ident] = r
    return [best[k] for k in sorted(best, key=str)]


def _model_name(r: dict, i: int) -> str:
    """How the convergence count names a model: its seed, or its position when the seed is unknown
    (a name no seed can take, so that two models never share one)."""
    return str(r["seed"]) if r["seed"] is not None else f"#{i + 1}"


def _natural(name: str) -> tuple:
    """Sort key: seed names numerically ("2" before "10"), other names after them."""
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def _arm_of_cell(cell_id: str | None) -> str | None:
    """A sweep cell id without its seed: ".../s0.35/seed3" -> ".../s0.35" (the arm and σ it belongs to)."""
    if not cell_id or "/seed" not in cell_id:
        return None
    return cell_id.rsplit("/seed", 1)[0]


def _pooled_stats(models: list[dict]) -> dict:
    # pool only when every model has its per-chip accuracies: otherwise some models' chips would be
    # left out of the worst case without a word
    pooled = [a for r in models for a in r["per_run_accuracy"]] if all(r["per_run_accuracy"] for r in models) else []
    if pooled:
        arr = np.asarray(pooled, dtype=np.float64)
        p1, p5, p10 = (float(v) for v in np.percentile(arr, [1.0, 5.0, 10.0]))
        return {"p1": p1, "p5": p5, "p10": p10, "min": float(arr.min()), "n_chips": int(arr.size), "pooled": pooled}
    vals = {k: [r[k] for r in models if r[k] is not None] for k in ("p1", "p5", "p10", "min")}
    return {
        "p1": float(np.mean(vals["p1"])) if vals["p1"] else None,
        "p5": float(np.mean(vals["p5"])) if vals["p5"] else None,
        "p10": float(np.mean(vals["p10"])) if vals["p10"] else None,
        "min": float(min(vals["min"])) if vals["min"] else None,
        "n_chips": int(sum(r["runs"] for r in models)),
        "pooled": [],
    }


def matched_points(records: Sequence[dict], failures: Sequence[dict] = ()) -> list[dict]:
    """Paper Fig. 3 points: one per (model, width, dataset, label, σ_d), trained and tested at σ_d
    (vanilla: every test σ), aggregated over seeds. Sorted by group, method, label, σ.

    ``failures`` (ResultSet.failures): failed sweep cells of a point's arm (same cell id but the seed)
    are counted in its "failed_seeds", so that a diverged training run is not silently missing from
    the convergence count."""
    failed_by_arm: dict[str, set] = {}
    for f in failures:
        arm = _arm_of_cell(f.get("cell_id"))
        if arm is not None:
            failed_by_arm.setdefault(arm, set()).add(str(f["cell"].get("seed", f["cell_id"].rsplit("/seed", 1)[1])))
    buckets: dict[tuple, list[dict]] = {}
    for r in records:
        if r["method"] != "vanilla":
            if r["train_sigma"] is None or abs(r["train_sigma"] - r["test_sigma"]) > _SIGMA_TOL:
                continue
        key = (*group_key(r), r["label"], r["method"], _sigma_key(r["test_sigma"]))
        buckets.setdefault(key, []).append(r)
    points = []
    for key, recs in buckets.items():
        model, width, dataset, label, method, sigma = key
        models = _dedupe_by_model(recs)
        means = [r["mean"] for r in models]
        n = len(models)
        mean = float(np.mean(means))
        if n >= 2:
            sd = float(np.std(means, ddof=1))
            half = _t975(n - 1) * sd / math.sqrt(n)
            ci, ci_over = [mean - half, mean + half], "seeds"
        else:
            sd = None
            ci, ci_over = list(models[0]["ci95"]), "MC runs"
        ekls = [r["ekl"] for r in models if r["ekl"] is not None]
        runs = sorted({r["runs"] for r in models})
        conv = None
        if n >= 2:
            conv = _convergence({_model_name(r, i): r["mean"] for i, r in enumerate(models)})
        arms = {_arm_of_cell(r["cell_id"]) for r in models} - {None}
        have = {str(r["seed"]) for r in models}
        failed = sorted(set().union(*(failed_by_arm.get(a, set()) for a in arms)) - have, key=_natural)
        paper_arm = all(reference.is_paper_recipe(method, r["method_params"]) and is_standard_evaluation(r)
                        for r in models)
        paper = reference.paper_match(model, dataset, method, sigma) if paper_arm else None  # ablation arms: none
        cleans = [r["clean_accuracy"] for r in models if r["clean_accuracy"] is not None]
        points.append(
            {
                "model": model, "width": width, "dataset": dataset, "method": method, "label": label,
                "sigma": sigma, "n_seeds": n, "seeds": [r["seed"] for r in models],
                "runs": runs[0] if len(runs) == 1 else f"{runs[0]}–{runs[-1]}",
                "runs_min": runs[0], "mean": mean, "ci95": ci, "ci_over": ci_over, "std_over_seeds": sd,
                "seed_means": means, "ekl": float(np.mean(ekls)) if ekls else None,
                "clean_accuracy": float(np.mean(cleans)) if cleans else None,
                **_pooled_stats(models),
                "convergence": conv,
                "failed_seeds": failed,
                "paper_arm": paper_arm,
                "paper": paper["value"] if paper else None,
                "paper_diff": mean - paper["value"] if paper else None,
                "paper_note": paper["note"] if paper else "",
            }
        )
    points.sort(key=lambda p: ((p["model"], str(p["width"]), p["dataset"]),
                               _label_sort_key(p["label"], p["method"]), p["sigma"]))
    return points


def verify_curves(verify_records: Sequence[dict]) -> list[dict]:
    """Write-verify curves: one per (group, label, test σ, ranking, residual σ), accuracy vs verified fraction
    averaged over the models (seeds); "reach": {target: [(seed, first fraction reaching it, or None)]}."""
    buckets: dict[tuple, list[dict]] = {}
    for r in verify_records:
        key = (*group_key(r), r["label"], r["method"], _sigma_key(r["test_sigma"]), _sigma_key(r["train_sigma"]),
               r["verify_by"], r["residual_sigma"])
        buckets.setdefault(key, []).append(r)
    curves = []
    for (model, width, dataset, label, method, sigma, train_sigma, by, residual), recs in buckets.items():
        by_file: dict[str, list[dict]] = {}
        for r in recs:
            by_file.setdefault(r["file"], []).append(r)
        # one file per model (seed, or checkpoint): the one with the most points, then the last by name
        best: dict[Any, str] = {}
        for f in sorted(by_file):
            r0 = by_file[f][0]
            ident = r0["seed"] if r0["seed"] is not None else (r0["checkpoint_path"] or f)
            if ident not in best or len(by_file[f]) >= len(by_file[best[ident]]):
                best[ident] = f
        by_file = {best[k]: by_file[best[k]] for k in best}
        recs = [r for f in by_file for r in by_file[f]]
        if method != "vanilla" and train_sigma is not None and train_sigma != sigma:
            label = f"{label} (trained at σ {fmt_param(train_sigma)})"
        points = []
        for fr in sorted({r["verify_fraction"] for r in recs}):
            at = [r for r in recs if r["verify_fraction"] == fr]
            means = [r["mean"] for r in at]
            devices = [d for d in (_num(r["verified_devices"]) for r in at) if d is not None]
            points.append({"fraction": fr, "mean": float(np.mean(means)), "lo": min(means), "hi": max(means),
                           "n": len(at), "devices": float(np.mean(devices)) if devices else None})
        reach: dict[float, list] = {}
        for t in sorted({r["verify_target"] for r in recs if r["verify_target"] is not None}):
            per = []
            for f in sorted(by_file, key=lambda f: _natural(str(by_file[f][0]["seed"]))):
                rows = sorted(by_file[f], key=lambda r: r["verify_fraction"])
                stat = rows[0]["verify_stat"]
                hit = next((r["verify_fraction"] for r in rows if _num(r.get(stat)) is not None and r[stat] >= t), None)
                per.append((rows[0]["seed"], hit))
            reach[t] = per
        curves.append({"group": (model, width, dataset), "label": label, "method": method, "sigma": sigma, "by": by,
                       "residual_sigma": residual, "n_models": len(by_file), "points": points, "reach": reach,
                       "stat": recs[0]["verify_stat"]})
    curves.sort(key=lambda c: (c["group"][0], str(c["group"][1]), c["group"][2], c["sigma"],
                               _label_sort_key(c["label"], c["method"]), RANKING_ORDER.get(c["by"], 9)))
    return curves


RANKING_ORDER = {"sensitivity": 0, "magnitude": 1, "random": 2}


def robustness_curves(records: Sequence[dict]) -> list[dict]:
    """One curve per results file with ≥ 2 test σ (an `nvcim eval --curve` result): accuracy vs test σ."""
    by_file: dict[str, list[dict]] = {}
    for r in records:
        if r["n_test_sigmas"] >= 2:
            by_file.setdefault(r["file"], []).append(r)
    curves = []
    for f, recs in sorted(by_file.items()):
        recs = sorted(recs, key=lambda r: r["test_sigma"])
        r0 = recs[0]
        name = r0["label"]
        if r0["method"] != "vanilla" and r0["train_sigma"] is not None:
            name += f", σ_train={_fmt_sigma(r0['train_sigma'])}"
        if r0["seed"] is not None:
            name += f", seed {r0['seed']}"
        curves.append({"file": f, "group": group_key(r0), "label": r0["label"], "method": r0["method"],
                       "name": name, "train_sigma": r0["train_sigma"], "records": recs})
    return curves


# ---- figures ---------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


class _Figures:
    """Renders each figure once as PNG bytes (for the HTML) and writes it in the requested format."""

    def __init__(self, out: Path, fmt: str):
        self.out, self.fmt, self.items = out, fmt, []
        self.plt = _pyplot()

    def save(self, fig, name: str, caption: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        png = buf.getvalue()
        path = self.out / "figures" / f"{name}.{self.fmt}"
        if self.fmt == "png":
            data = png
        else:
            buf2 = io.BytesIO()
            fig.savefig(buf2, format=self.fmt, bbox_inches="tight")
            data = buf2.getvalue()
        self.plt.close(fig)
        atomic_write_bytes(path, data)
        self.items.append({"path": path, "png": png, "caption": caption, "name": name})


def _colours(labels_methods: Iterable[tuple[str, str]]) -> dict[str, Any]:
    fixed = {"vanilla": "tab:gray", "noise injection": "tab:blue", "OVF": "tab:red"}
    cycle = ["tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan",
             "navy", "darkgreen", "maroon", "gold", "black"]
    out, i = {}, 0
    for label, method in sorted(set(labels_methods), key=lambda lm: _label_sort_key(lm[0], lm[1])):
        if label in fixed:
            out[label] = fixed[label]
        else:
            out[label] = cycle[i % len(cycle)]
            i += 1
    return out


def _runs_note(pts: list[dict]) -> str:
    ns = sorted({p["n_seeds"] for p in pts})
    rs = sorted({p["runs_min"] for p in pts})
    n = str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    r = str(rs[0]) if len(rs) == 1 else f"{rs[0]}–{rs[-1]}"
    return f"{n} seed{'s' if ns[-1] != 1 else ''} × {r} runs"


def _fig_accuracy(F: _Figures, gkey, gpts, colours, title_prefix):
    plt = F.plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = _ordered_labels(gpts)
    paper_done = set()
    for label, method in labels:
        pts = [p for p in gpts if p["label"] == label]
        x = [p["sigma"] for p in pts]
        y = [p["mean"] for p in pts]
        # CI bounds clipped to the possible range [0, 100] (a 2-seed t interval can be very wide)
        lo = [p["mean"] - max(0.0, p["ci95"][0]) if p["ci95"][0] is not None else 0.0 for p in pts]
        hi = [min(100.0, p["ci95"][1]) - p["mean"] if p["ci95"][1] is not None else 0.0 for p in pts]
        ax.errorbar(x, y, yerr=[lo, hi], marker="o", ms=4, capsize=3, color=colours[label],
                    label=f"{label} ({_runs_note(pts)})")
        if method in paper_done or not all(p["paper_arm"] for p in pts):  # the paper's curve: beside its own arm
            continue
        rows = [r for r in reference.paper_curves() if r["quantity"] == "accuracy" and r["method"] == method
                and r["model"] == gkey[0] and r["dataset"] == reference.paper_dataset(gkey[2])[0]]
        if rows:
            paper_done.add(method)
            note = reference.paper_dataset(gkey[2])[1]
            rows.sort(key=lambda r: r["sigma"])
            ax.plot([r["sigma"] for r in rows], [r["value"] for r in rows], ls="--", color=colours[label],
                    alpha=0.8, label=f"paper ({_base_label(method, {})}{'; ' + note if note else ''})")
    ys = [v for ln in ax.get_lines() for v in ln.get_ydata() if math.isfinite(v)]
    if ys:
        ax.set_ylim(max(-1.0, min(ys) - 5.0), min(101.0, max(ys) + 3.0))
    ax.set_xlabel("device variation σ_d (trained and tested at σ_d; vanilla: tested at σ_d)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{title_prefix}{group_title(gkey)}: accuracy vs σ_d (mean over seeds, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    F.save(fig, _slug("accuracy", *gkey), f"{group_title(gkey)}: accuracy vs σ_d (Fig. 3 style); dashed: paper")


def _ordered_labels(pts: list[dict]) -> list[tuple[str, str]]:
    return sorted({(p["label"], p["method"]) for p in pts}, key=lambda lm: _label_sort_key(*lm))


def _fig_ekl(F: _Figures, gkey, gpts, colours, title_prefix) -> bool:
    pts = [p for p in gpts if p["ekl"] is not None and p["ekl"] > 0]
    if not pts:
        return False
    plt = F.plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, _ in _ordered_labels(pts):
        lp = [p for p in pts if p["label"] == label]
        ax.plot([p["sigma"] for p in lp], [p["ekl"] for p in lp], marker="o", ms=4, color=colours[label],
                label=f"{label} ({_runs_note(lp)})")
    ax.set_yscale("log")
    ax.set_xlabel("device variation σ_d")
    ax.set_ylabel("EKL (nats, over correct predictions)")
    ax.set_title(f"{title_prefix}{group_title(gkey)}: EKL vs σ_d (lower is better)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    F.save(fig, _slug("ekl", *gkey), f"{group_title(gkey)}: EKL vs σ_d (Fig. 4 style, log scale)")
    return True


def _fig_distribution(F: _Figures, gkey, gpts, colours, title_prefix) -> bool:
    pts = [p for p in gpts if p["pooled"]]
    if not pts:
        return False
    sigmas = sorted({p["sigma"] for p in pts})
    if len(sigmas) > 4:
        sigmas = sigmas[-1:]
    plt = F.plt
    fig, axes = plt.subplots(1, len(sigmas), figsize=(max(4.5, 3.6 * len(sigmas)), 4.2), squeeze=False)
    for ax, s in zip(axes[0], sigmas):
        sp = sorted([p for p in pts if p["sigma"] == s], key=lambda p: _label_sort_key(p["label"], p["method"]))
        pos = list(range(1, len(sp) + 1))
        bp = ax.boxplot([p["pooled"] for p in sp], positions=pos, widths=0.6, whis=(0, 100), patch_artist=True)
        for patch, p in zip(bp["boxes"], sp):
            patch.set_facecolor(colours[p["label"]])
            patch.set_alpha(0.35)
        for i, p in zip(pos, sp):
            ax.scatter([i - 0.2], [p["p1"]], marker="v", color="k", s=18, zorder=3, label="p1" if i == 1 else None)
            ax.scatter([i], [p["p5"]], marker="^", color="tab:orange", s=18, zorder=3, label="p5" if i == 1 else None)
            ax.scatter([i + 0.2], [p["min"]], marker="x", color="tab:red", s=22, zorder=3, label="min" if i == 1 else None)
        ax.set_xticks(pos)
        ax.set_xticklabels([f"{p['label']}\n({p['n_chips']} chips)" for p in sp], fontsize=7, rotation=20)
        ax.set_title(f"σ_d = {_fmt_sigma(s)}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("per-run (per-chip) accuracy (%)")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=7, loc="lower right", ncol=3)  # below the axes: clear of the title
    fig.suptitle(f"{title_prefix}{group_title(gkey)}: distribution of per-run accuracy (seeds pooled)", fontsize=10)
    F.save(fig, _slug("distribution", *gkey),
           f"{group_title(gkey)}: per-run accuracy distribution (whiskers: min–max; markers: p1, p5, min)")
    return True


def _fig_convergence(F: _Figures, gkey, gpts, colours, title_prefix) -> bool:
    pts = [p for p in gpts if p["n_seeds"] >= 2]
    if not pts:
        return False
    plt = F.plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = _ordered_labels(pts)
    sigmas = sorted({p["sigma"] for p in pts})
    step = min(np.diff(sigmas)) if len(sigmas) > 1 else 0.05
    width = 0.7 * step
    total_bad = 0
    for j, (label, _) in enumerate(labels):
        off = (j - (len(labels) - 1) / 2) * width / max(len(labels), 1)
        first = True
        for p in [q for q in pts if q["label"] == label]:
            xs = [p["sigma"] + off] * len(p["seed_means"])
            conv = p["convergence"]
            bad = set(conv["non_converged"]) if conv else set()
            total_bad += len(bad)
            names = [str(s) if s is not None else f"#{i + 1}" for i, s in enumerate(p["seeds"])]  # as _model_name
            ax.scatter(xs, p["seed_means"], color=colours[label], s=16, alpha=0.8,
                       label=f"{label} (non-converged: {sum(q['convergence']['n_non_converged'] for q in pts if q['label'] == label)})" if first else None)
            first = False
            badv = [m for m, nme in zip(p["seed_means"], names) if nme in bad]
            if badv:
                ax.scatter([p["sigma"] + off] * len(badv), badv, facecolors="none", edgecolors="k", s=60)
            ax.hlines(p["mean"], p["sigma"] + off - width / (2 * len(labels)), p["sigma"] + off + width / (2 * len(labels)),
                      color=colours[label])
            ax.hlines(p["mean"] - CONVERGENCE_THRESHOLD, p["sigma"] + off - width / (2 * len(labels)),
                      p["sigma"] + off + width / (2 * len(labels)), color=colours[label], ls=":")
    ax.set_xlabel("device variation σ_d")
    ax.set_ylabel("per-seed mean accuracy (%)")
    ax.set_title(f"{title_prefix}{group_title(gkey)}: per-seed means (circled: > {CONVERGENCE_THRESHOLD:g} pts below mean)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    F.save(fig, _slug("convergence", *gkey),
           f"{group_title(gkey)}: convergence over seeds ({total_bad} non-converged; dotted: mean − 5)")
    return True


def _fig_write_verify(F: _Figures, gkey, vcurves, colours, title_prefix) -> None:
    plt = F.plt
    for sigma in sorted({c["sigma"] for c in vcurves}):
        cs = [c for c in vcurves if c["sigma"] == sigma]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for c in cs:
            x = [p["fraction"] for p in c["points"]]
            colour = colours.get(c["label"], "k")
            ls = {"sensitivity": "-", "magnitude": "--", "random": ":"}.get(c["by"], "-.")
            ax.plot(x, [p["mean"] for p in c["points"]], marker="o", ms=3, ls=ls, color=colour,
                    label=f"{c['label']}, by {c['by']} ({c['n_models']} models)")
            if c["n_models"] > 1:
                ax.fill_between(x, [p["lo"] for p in c["points"]], [p["hi"] for p in c["points"]], color=colour,
                                alpha=0.12)
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlabel("fraction of weights write-verified (symlog)")
        ax.set_ylabel("mean top-1 accuracy over chips (%)")
        res = sorted({c["residual_sigma"] for c in cs if c["residual_sigma"] is not None})
        ax.set_title(f"{title_prefix}{group_title(gkey)}: write-verify at σ_d = {_fmt_sigma(sigma)} (verified devices "
                     f"left at σ {', '.join(fmt_param(r) for r in res)}; band: min–max over models)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        F.save(fig, _slug("write_verify", *gkey, _fmt_sigma(sigma)),
               f"{group_title(gkey)}: accuracy vs write-verified fraction at σ_d = {_fmt_sigma(sigma)}")


def _fig_robustness(F: _Figures, gkey, gcurves, colours, title_prefix) -> bool:
    if not gcurves:
        return False
    plt = F.plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cyc = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["k"])
    for i, c in enumerate(gcurves):
        recs = c["records"]
        x = [r["test_sigma"] for r in recs]
        y = [r["mean"] for r in recs]
        distinct = len({g["label"] for g in gcurves}) == len(gcurves)
        colour = colours.get(c["label"], cyc[i % len(cyc)]) if distinct else cyc[i % len(cyc)]
        ls = ["-", "--", "-.", ":"][i % 4]
        runs = sorted({r["runs"] for r in recs})
        ax.plot(x, y, marker="o", ms=3, ls=ls, color=colour,
                label=f"{c['name']} ({runs[0]} runs)" if i < 15 else None)
        lo = [r["ci95"][0] if r["ci95"][0] is not None else r["mean"] for r in recs]
        hi = [r["ci95"][1] if r["ci95"][1] is not None else r["mean"] for r in recs]
        ax.fill_between(x, lo, hi, color=colour, alpha=0.15)
        if c["train_sigma"] is not None and c["method"] != "vanilla":
            ax.axvline(c["train_sigma"], color=colour, lw=0.6, alpha=0.4)
    ax.set_xlabel("test σ")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{title_prefix}{group_title(gkey)}: robustness curves (accuracy vs test σ, 95% MC CI)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    F.save(fig, _slug("robustness", *gkey), f"{group_title(gkey)}: robustness curves of single checkpoints")
    return True


# ---- tables ----------------------------------------------------------------------------------------
@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""


def _acc_table(gkey, gpts) -> Table:
    labels = _ordered_labels(gpts)
    has_paper = {lab for lab, _ in labels if any(p["paper"] is not None for p in gpts if p["label"] == lab)}
    headers = ["σ_d"]
    for lab, _ in labels:
        headers.append(f"{lab}")
        if lab in has_paper:
            headers.append(f"{lab}: paper (measured − paper)")
    rows = []
    for s in sorted({p["sigma"] for p in gpts}):
        row = [_fmt_sigma(s)]
        for lab, _ in labels:
            p = next((q for q in gpts if q["label"] == lab and q["sigma"] == s), None)
            if p is None:
                row.append("")
            else:
                lo, hi = p["ci95"]
                half = f" ± {_fmt((hi - lo) / 2)}" if lo is not None and hi is not None else ""
                row.append(f"{_fmt(p['mean'])}{half} (n={p['n_seeds']})")
            if lab in has_paper:
                if p is not None and p["paper"] is not None:
                    row.append(f"{_fmt(p['paper'])} ({p['paper_diff']:+.2f})")
                else:
                    row.append("")
        rows.append(row)
    notes = sorted({p["paper_note"] for p in gpts if p["paper_note"]})
    note = ("Measured: mean over seeds of each model's Monte Carlo mean ± half-width of the 95% CI (over seeds when "
            "n ≥ 2, else the MC CI); " + "; ".join(sorted({f"{lab}: {_runs_note([p for p in gpts if p['label'] == lab])}"
                                                          for lab, _ in labels})) + ".")
    if has_paper:
        note += " Paper: Qin et al., Fig. 3 (authors' figures)."
    if notes:
        note += " Note: " + "; ".join(notes) + "."
    return Table(f"{group_title(gkey)}: top-1 accuracy (%) trained and tested at σ_d", headers, rows, note)


def _ekl_table(gkey, gpts) -> Table | None:
    if not any(p["ekl"] is not None for p in gpts):
        return None
    labels = _ordered_labels(gpts)
    rows = []
    for s in sorted({p["sigma"] for p in gpts}):
        row = [_fmt_sigma(s)]
        for lab, _ in labels:
            p = next((q for q in gpts if q["label"] == lab and q["sigma"] == s), None)
            row.append("" if p is None else _fmt_ekl(p["ekl"]))
        rows.append(row)
    return Table(f"{group_title(gkey)}: EKL (nats; mean over seeds; lower is better)",
                 ["σ_d"] + [lab for lab, _ in labels], rows,
                 "EKL = mean of −log p_y over correct (run, sample) pairs; — where no prediction was correct.")


def _worst_table(gkey, gpts) -> Table:
    rows = [[_fmt_sigma(p["sigma"]), p["label"], _fmt(p["mean"]), _fmt(p["p1"]), _fmt(p["p5"]), _fmt(p["p10"]),
             _fmt(p["min"]), str(p["n_chips"])]
            for p in sorted(gpts, key=lambda p: (p["sigma"], _label_sort_key(p["label"], p["method"])))]
    return Table(f"{group_title(gkey)}: worst case over chips (%)",
                 ["σ_d", "method", "mean", "p1", "p5", "p10", "min", "chips (seeds × runs)"], rows,
                 "Percentiles over all chips of all seeds pooled (or the mean of per-model values when per-run "
                 "accuracies are absent).")


def _conv_table(gkey, gpts) -> Table | None:
    pts = [p for p in gpts if p["convergence"] or p["failed_seeds"]]  # failed seeds show even beside < 2 models
    if not pts:
        return None
    rows = []
    for p in sorted(pts, key=lambda p: (p["sigma"], _label_sort_key(p["label"], p["method"]))):
        c = p["convergence"]
        if c is None:
            rows.append([_fmt_sigma(p["sigma"]), p["label"], str(p["n_seeds"]), _fmt(p["mean"]), "—", "—",
                         ", ".join(_fmt(m) for m in p["seed_means"]), ", ".join(p["failed_seeds"])])
            continue
        rows.append([_fmt_sigma(p["sigma"]), p["label"], str(c["n_models"]), _fmt(c["mean_of_means"]),
                     f"{c['n_non_converged']} of {c['n_models']}", ", ".join(map(str, c["non_converged"])) or "—",
                     ", ".join(_fmt(m) for m in p["seed_means"]), ", ".join(p["failed_seeds"]) or "—"])
    return Table(f"{group_title(gkey)}: convergence over seeds",
                 ["σ_d", "method", "models", "mean of means", "non-converged", "non-converged seeds", "per-seed means",
                  "failed seeds"],
                 rows, f"Non-converged: mean more than {CONVERGENCE_THRESHOLD:g} points below the mean over seeds (SPEC §4). "
                       "Failed seeds: sweep cells of the same arm that failed (e.g. diverged training) and so have no "
                       "accuracy; they are not in the count, see the failed cells below.")


def _beta_candidates(bs: dict) -> dict[float, float | None]:
    """{β: validation MC mean (None: diverged)} of one β-search record (sweep layout, or a plain "scores" map)."""
    out: dict[float, float | None] = {}
    for c in bs.get("candidates") or []:
        if isinstance(c, dict) and _num(c.get("beta")) is not None:
            out[_num(c["beta"])] = _num(c.get("val_mean"))
    if not out and isinstance(bs.get("scores"), dict):
        for b, v in bs["scores"].items():
            if _num(b) is not None:
                out[_num(b)] = _num(v)
    return out


def _beta_table(gkey, grecs: list[dict]) -> Table | None:
    """One row per β-searched model: every candidate's validation score, the chosen β and its test accuracy."""
    cells = {}
    for r in grecs:
        if r["beta_search"] and _sigma_key(r["test_sigma"]) == _sigma_key(r["train_sigma"]):
            cells.setdefault(r["cell_id"] or r["file"], r)
    if not cells:
        return None
    recs = sorted(cells.values(), key=lambda r: (r["train_sigma"] or 0.0, _label_sort_key(r["label"], r["method"]),
                                                 str(r["seed"])))
    cands = [_beta_candidates(r["beta_search"]) for r in recs]  # parallel to recs
    betas = sorted({b for c in cands for b in c}, reverse=True)
    rows, chosen_count = [], {}
    for r, c in zip(recs, cands):
        chosen = _num(r["beta_search"].get("chosen_beta", r["beta_search"].get("chosen")))
        chosen_count[chosen] = chosen_count.get(chosen, 0) + 1
        rows.append([_fmt_sigma(r["train_sigma"]), r["label"], str(r["seed"])]
                    + [("" if b not in c else "diverged" if c[b] is None else _fmt(c[b])) for b in betas]
                    + [fmt_param(chosen) if chosen is not None else "—", _fmt(r["mean"])])
    bs0 = recs[0]["beta_search"]
    how = (f"{bs0.get('val_runs')} chips (seed {bs0.get('val_seed')}) on the validation split"
           if bs0.get("val_runs") is not None else "the validation split")
    counts = ", ".join(f"β = {fmt_param(b)} ×{n}" for b, n in sorted(chosen_count.items(),
                                                                      key=lambda kv: -(kv[0] or 0.0)))
    note = (f"Validation score: Monte Carlo mean accuracy (%) at the training σ_d over {how}; the best β is "
            f"tested (ties: the larger β). Chosen: {counts}.")
    return Table(f"{group_title(gkey)}: β search (validation accuracy % per candidate)",
                 ["σ_d", "method", "seed"] + [f"β = {fmt_param(b)}" for b in betas] + ["chosen β", "test mean"],
                 rows, note)


def _headline_table(gkey, gpts) -> Table | None:
    rows = []
    for s in sorted({p["sigma"] for p in gpts}):
        o = next((p for p in gpts if p["sigma"] == s and p["label"] == "OVF"), None)
        ni = next((p for p in gpts if p["sigma"] == s and p["label"] == "noise injection"), None)
        if o is None or ni is None:
            continue
        d = o["mean"] - ni["mean"]
        pd = (o["paper"] - ni["paper"]) if o["paper"] is not None and ni["paper"] is not None else None
        rows.append([_fmt_sigma(s), f"{d:+.2f}", "" if pd is None else f"{pd:+.2f}"])
    if not rows:
        return None
    return Table(f"{group_title(gkey)}: OVF − noise injection (points)", ["σ_d", "measured", "paper"], rows)


def _curve_table(gkey, gcurves) -> Table | None:
    if not gcurves:
        return None
    sigmas = sorted({_sigma_key(r["test_sigma"]) for c in gcurves for r in c["records"]})
    rows = []
    for s in sigmas:
        row = [_fmt_sigma(s)]
        for c in gcurves:
            r = next((r for r in c["records"] if _sigma_key(r["test_sigma"]) == s), None)
            if r is None:
                row.append("")
            else:
                lo, hi = r["ci95"]
                half = f" ± {_fmt((hi - lo) / 2)}" if lo is not None and hi is not None else ""
                row.append(f"{_fmt(r['mean'])}{half}")
        rows.append(row)
    return Table(f"{group_title(gkey)}: robustness curves (accuracy %, ± 95% MC CI)",
                 ["test σ"] + [c["name"] for c in gcurves], rows)


def _verify_table(gkey, vcurves) -> Table | None:
    if not vcurves:
        return None
    fractions = sorted({p["fraction"] for c in vcurves for p in c["points"]})
    targets = sorted({t for c in vcurves for t in c["reach"]})
    rows = []
    for c in vcurves:
        at = {p["fraction"]: p["mean"] for p in c["points"]}
        row = [_fmt_sigma(c["sigma"]), c["label"], c["by"], str(c["n_models"])]
        row += [_fmt(at.get(f)) if f in at else "" for f in fractions]
        for t in targets:
            hits = c["reach"].get(t)
            row.append("" if hits is None else ", ".join(
                f"{'?' if seed is None else seed}: {'never' if h is None else fmt_param(h)}" for seed, h in hits))
        rows.append(row)
    stats = sorted({c["stat"] for c in vcurves})
    return Table(f"{group_title(gkey)}: write-verify (mean accuracy % over models, by verified fraction)",
                 ["σ_d", "method", "ranking", "models"] + [fmt_param(f) for f in fractions]
                 + [f"reaches {fmt_param(t)} % at (seed: fraction)" for t in targets], rows,
                 "All M/K devices of a verified weight are left at the residual σ; "
                 f"'reaches' is the smallest fraction tried whose {'/'.join(stats)} accuracy reaches the target "
                 "(each results file's --verify-target).")


def _paper_ekl_table() -> Table | None:
    rows = [r for r in reference.paper_curves() if r["quantity"] == "ekl"]
    if not rows:
        return None
    methods = sorted({r["method"] for r in rows}, key=lambda m: (_METHOD_ORDER.get(m, 9), m))
    sigmas = sorted({r["sigma"] for r in rows})
    out = []
    for s in sigmas:
        row = [_fmt_sigma(s)]
        for m in methods:
            v = next((r["value"] for r in rows if r["method"] == m and r["sigma"] == s), None)
            row.append("" if v is None else f"{v:.3g}")
        out.append(row)
    return Table("Published EKL (paper Fig. 4; model/dataset unlabelled there)", ["σ_d"] + methods, out,
                 "For orientation only: the paper does not say which model/dataset these come from.")


# ---- rendering -------------------------------------------------------------------------------------
def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> str:
    from tabulate import tabulate

    body = tabulate([[_md_cell(c) for c in r] for r in t.rows], headers=[_md_cell(h) for h in t.headers],
                    tablefmt="pipe", disable_numparse=True)
    out = f"### {t.title}\n\n{body}\n"
    if t.note:
        out += f"\n{t.note}\n"
    return out


def _html_table(t: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in t.headers)
    body = "\n".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in t.rows)
    note = f'<p class="note">{e(t.note)}</p>' if t.note else ""
    return f"<h3>{e(t.title)}</h3>\n<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n{note}\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 0.3em;font-size:0.85em}
th,td{border:1px solid #bbb;padding:3px 7px;text-align:right}th{background:#eee}
td:first-child,th:first-child{text-align:left}.note{font-size:0.8em;color:#555}
figure{margin:1em 0}img{max-width:100%}figcaption{font-size:0.85em;color:#444}"""

SUMMARY_COLUMNS = ("model", "width", "dataset", "method", "label", "sigma", "n_seeds", "seeds", "runs", "mean",
                   "ci95_lo", "ci95_hi", "ci_over", "std_over_seeds", "ekl", "p1", "p5", "p10", "min", "n_chips",
                   "n_non_converged", "failed_seeds", "paper", "measured_minus_paper", "paper_note")


def _summary_csv(points: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_COLUMNS)

    def c(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return "" if not math.isfinite(v) else repr(v)
        return v

    for p in points:
        conv = p["convergence"]
        w.writerow([c(v) for v in (
            p["model"], p["width"], p["dataset"], p["method"], p["label"], p["sigma"], p["n_seeds"],
            " ".join(str(s) for s in p["seeds"]), p["runs"], p["mean"], p["ci95"][0], p["ci95"][1], p["ci_over"],
            p["std_over_seeds"], p["ekl"], p["p1"], p["p5"], p["p10"], p["min"], p["n_chips"],
            conv["n_non_converged"] if conv else None, " ".join(p["failed_seeds"]), p["paper"], p["paper_diff"], p["paper_note"])])
    return buf.getvalue().encode("utf-8")


def write_report(rs: ResultSet, out, fmt: str = "png", title: str | None = None) -> list[Path]:
    """Write figures (out/figures/*.fmt), report.md, report.html and summary.csv; return the paths written."""
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"figure format {fmt!r} is not supported: use one of {list(FIGURE_FORMATS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    points = matched_points(rs.records, rs.failures)
    curves = robustness_curves(rs.records)
    vcurves = verify_curves(rs.verify_records)
    colours = _colours([(p["label"], p["method"]) for p in points] + [(c["label"], c["method"]) for c in curves]
                       + [(c["label"], c["method"]) for c in vcurves])
    F = _Figures(out, fmt)
    prefix = ""
    title = title or "nvcim report"
    groups = sorted({(p["model"], p["width"], p["dataset"]) for p in points} | {c["group"] for c in curves}
                    | {c["group"] for c in vcurves}, key=lambda k: (k[0], str(k[1]), k[2]))
    sections = []  # (group title, [Table], [figure items])
    for g in groups:
        gpts = [p for p in points if (p["model"], p["width"], p["dataset"]) == g]
        gcurves = [c for c in curves if c["group"] == g]
        gverify = [c for c in vcurves if c["group"] == g]
        n0 = len(F.items)
        if gpts:
            _fig_accuracy(F, g, gpts, colours, prefix)
            _fig_ekl(F, g, gpts, colours, prefix)
            _fig_distribution(F, g, gpts, colours, prefix)
            _fig_convergence(F, g, gpts, colours, prefix)
        _fig_robustness(F, g, gcurves, colours, prefix)
        if gverify:
            _fig_write_verify(F, g, gverify, colours, prefix)
        tables = []
        if gpts:
            tables = [_acc_table(g, gpts), _headline_table(g, gpts), _ekl_table(g, gpts), _worst_table(g, gpts),
                      _conv_table(g, gpts),
                      _beta_table(g, [r for r in rs.records if (r["model"], r["width"], r["dataset"]) == g])]
        tables.append(_curve_table(g, gcurves))
        tables.append(_verify_table(g, gverify))
        sections.append((group_title(g), [t for t in tables if t is not None], F.items[n0:]))
    failures = Table("Failed sweep cells", ["cell", "error", "file"],
                     [[f["cell_id"], f["error"], f["file"]] for f in rs.failures]) if rs.failures else None
    paper_ekl = _paper_ekl_table()
    n_models = len({(r["file"]) for r in rs.records})
    where = ", ".join(str(r) for r in rs.roots or [rs.root])
    intro = (f"{len(rs.records)} result rows from {n_models} results files under {where}; "
             f"{len(rs.failures)} failed cells; {len(rs.skipped)} other JSON files skipped. "
             f"Generated by nvcim {_version()} on {time.strftime('%Y-%m-%d %H:%M:%S')}.")

    # markdown
    md = [f"# {title}\n", intro + "\n"]
    for gt, tables, figs in sections:
        md.append(f"## {gt}\n")
        for item in figs:
            rel = item["path"].relative_to(out).as_posix()
            md.append(f"![{_md_cell(item['caption'])}]({rel})\n")
        md.extend(_md_table(t) for t in tables)
    if failures:
        md.append("## Failures\n")
        md.append(_md_table(failures))
    if paper_ekl:
        md.append("## Reference\n")
        md.append(_md_table(paper_ekl))
    md_text = "\n".join(md)

    # html
    e = html.escape
    h = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{e(title)}</title>",
         f"<style>{_CSS}</style>", "</head>", "<body>", f"<h1>{e(title)}</h1>", f"<p>{e(intro)}</p>"]
    for gt, tables, figs in sections:
        h.append(f"<h2>{e(gt)}</h2>")
        for item in figs:
            b64 = base64.b64encode(item["png"]).decode("ascii")
            h.append(f'<figure><img src="data:image/png;base64,{b64}" alt="{e(item["caption"])}">'
                     f"<figcaption>{e(item['caption'])}</figcaption></figure>")
        h.extend(_html_table(t) for t in tables)
    if failures:
        h.append("<h2>Failures</h2>")
        h.append(_html_table(failures))
    if paper_ekl:
        h.append("<h2>Reference</h2>")
        h.append(_html_table(paper_ekl))
    h += ["</body>", "</html>", ""]

    written = [it["path"] for it in F.items]
    written.append(atomic_write_bytes(out / "report.md", md_text.encode("utf-8")))
    written.append(atomic_write_bytes(out / "report.html", "\n".join(h).encode("utf-8")))
    written.append(atomic_write_bytes(out / "summary.csv", _summary_csv(points)))
    return written


def _version() -> str:
    try:
        from nvcim import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "?"
