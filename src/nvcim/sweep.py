"""Sweeps: a grid of training + Monte Carlo evaluation cells, resumable and backend-independent.

    spec = load_spec("experiments/cpu/mnist5k.toml")       # TOML / YAML / JSON, validated
    cells = expand(spec)                                     # list[Cell], stable ids
    summary = run_sweep(spec, "runs/cpu", workers=2)        # backend "local" (default) or "ray"

A spec (TOML shown; see experiments/README.md for every key):

    name = "cpu-mnist5k"
    models = ["vgg8"]; width = 0.25; datasets = ["mnist5k"]
    methods = ["vanilla", "noise_injection", "ovf"]
    sigmas = [0.1, 0.2, 0.3]; seeds = [0, 1, 2]
    betas = [1e-1, 1e-2, 1e-3, 1e-4]   # OVF β candidates; one value = no search
    [train]      # TrainConfig fields (epochs, batch_size, lr, optimizer, schedule, limit, ...)
    [eval]       # runs, seed, val_runs, val_seed, batch_size, test_sigmas, keep_beta_checkpoints,
                 # bn_calibration_images
    [method_params.ovf]   # fixed hyper-parameters of a method for every cell of that method
    [resources]  # threads_per_cell, cpus_per_cell, gpus_per_cell
    [[variants]] # extra arms: label, method, params

Cells. One cell = one trained model (or one β search) + its test evaluation. Its id is
"<model>-w<width>/<dataset>/<label>/s<σ>/seed<seed>" ("…/vanilla/seed<seed>" for vanilla, trained
once per (model, dataset, seed) without noise and tested at every σ of the grid). A variant's label
takes the method's place, made file-name safe (characters other than A-Za-z0-9._+- become '_'); a
label whose name would start with '.' or match another arm's, case aside, is refused, so no two cells
ever share a directory. Files of a cell, under DIR/cells/<id>/:

    cell.json            the cell's full definition (written first; a partial cell whose
                         definition changed is wiped before it runs again)
    checkpoint/          nvcim.checkpoint of the model that is tested
    beta/<β>/checkpoint/ β search: one model per candidate, and beta/<β>/score.json (its
                         validation score; the marker that this candidate is done, unless
                         it cannot be read: then the candidate is scored again)
    result.json          written LAST, atomically: the cell is done (layout: `result_payload`);
                         one that is not this cell's valid result (e.g. truncated) does not count:
                         the cell runs again, with a warning (`result_problem`)
    failed.json          the cell raised or diverged: {"kind": "sweep_cell_failed", ...}

Determinism. Every cell seeds everything it draws from its own seed (nvcim.train, nvcim.evaluate),
and runs with a fixed number of torch threads (CPU float results depend on the thread count:
`[resources] threads_per_cell`, default: the machine's cores / workers); so a cell's numbers do not
depend on the order cells run in, on the process that runs them, or on an interruption: a rerun
after a kill (SIGKILL included) skips finished cells, reuses finished checkpoints / β candidates,
and ends with results identical to an uninterrupted run with the same threads_per_cell.

β search (SPEC §3). An OVF cell with several β candidates trains one model per β, scores each by
the Monte Carlo mean accuracy on the VALIDATION split (held out from the training data) at the
training σ with `eval.val_runs` chips (seed `eval.val_seed`), and tests only the best one. Ties go to
the larger β (deterministic; the larger β is the first step of the paper's four-step search).
Candidates whose training diverged are not eligible; if all diverge the cell fails.

Per-chip BatchNorm calibration (REPRODUCTION.md §4d). `eval.bn_calibration_images = N` (default 0: off,
the trained statistics are used) makes every chip, in the test evaluation and in the β search's
validation score alike, re-estimate its BatchNorm statistics from the first N training images with its
own programmed weights before it is scored (`nvcim.batchnorm.ChipCalibration`, batches of 1024), as
`nvcim eval --recalibrate-bn-per-chip N` does; result.json records it as "bn_recalibration", and
reports show such arms apart ("… (BN per chip)").
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence
from nvcim.fileio import atomic_write_text, check_output_path, read_mapping_file

SPEC_KEYS = ("name", "models", "width", "datasets", "methods", "sigmas", "seeds", "betas", "train", "eval",
             "method_params", "variants", "resources", "description")
EVAL_DEFAULTS: dict[str, Any] = {
    "runs": 200,  # Monte Carlo chips of the test evaluation
    "seed": 0,  # their seed
    "val_runs": 20,  # chips of the β-search validation score
    "val_seed": 1,  # their seed
    "batch_size": 1024,
    "test_sigmas": "train",  # "train" | "grid" | [σ, ...]
    "keep_beta_checkpoints": True,  # False: drop the non-tested β candidates' weights once a cell is done
    "bn_calibration_images": 0,  # > 0: every chip recalibrates BatchNorm from this many training images first
}
RESOURCE_DEFAULTS: dict[str, Any] = {"threads_per_cell": None, "cpus_per_cell": 1, "gpus_per_cell": None}
VARIANT_KEYS = ("label", "method", "params")
# TrainConfig fields the sweep sets itself (per cell) and the [train] table may not hold
SWEEP_SET = ("model", "width", "dataset", "method", "method_params", "sigma", "seed", "progress", "num_threads")

RESULT_FILE = "result.json"
FAILED_FILE = "failed.json"
CELL_FILE = "cell.json"
SCORE_FILE = "score.json"
SPEC_JSON = "spec.json"
LOCK_FILE = ".sweep.lock"
TOKEN_FILE = ".sweep-token"

_LABEL_SAFE = re.compile(r"[^A-Za-z0-9._+-]")
LABEL_MAX = 100  # characters of a variant's directory name


# ---- spec ------------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _err(where: str, key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"sweep spec {where}: key {key!r}={value!r} is invalid: use {allowed}")


def read_spec_file(path) -> dict:
    """The raw mapping of a spec file (.toml, .yaml/.yml or .json)."""
    return read_mapping_file(path, "sweep spec")


def load_spec(path) -> dict:
    """Read and validate a spec file; the name defaults to the file's stem."""
    raw = read_spec_file(path)
    raw.setdefault("name", Path(path).stem)
    return validate_spec(raw, where=str(path))


def _str_list(raw: Mapping, key: str, where: str, allowed: Sequence[str]) -> list[str]:
    v = raw[key]
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        raise _err(where, key, v, f"a non-empty list of names from {list(allowed)}")
    for x in v:
        if x not in allowed:
            raise ValueError(f"sweep spec {where}: key {key!r}: unknown name {x!r}: use one of {list(allowed)}")
    if len(set(v)) != len(v):
        raise _err(where, key, v, "a list without duplicates")
    return list(v)


def _num_list(raw: Mapping, key: str, where: str, *, integer: bool = False) -> list:
    v = raw[key]
    if _is_num(v):
        v = [v]
    what = "integers >= 0" if integer else "finite numbers >= 0"
    if not isinstance(v, list) or not v:
        raise _err(where, key, v, f"a non-empty list of {what}")
    for x in v:
        ok = (_is_int(x) if integer else _is_num(x)) and x >= 0
        if not ok:
            raise ValueError(f"sweep spec {where}: key {key!r}: value {x!r} is invalid: use {what}")
    out = [int(x) for x in v] if integer else [float(x) for x in v]
    if len(set(out)) != len(out):
        raise _err(where, key, v, "a list without duplicates")
    return out


def _method_params_ok(method: str, params: Mapping, where: str) -> None:
    from nvcim.methods import method_config

    try:
        method_config(method, **dict(params))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"sweep spec {where}: {str(exc).splitlines()[0]}") from None


def _table_with_defaults(raw: Mapping, name: str, defaults: Mapping, where: str) -> dict:
    """The spec's [name] table over its defaults; unknown keys are a one-line error."""
    table = raw.get(name, {})
    if not isinstance(table, Mapping):
        raise _err(where, name, table, "a table")
    unknown = sorted(set(table) - set(defaults))
    if unknown:
        raise ValueError(f"sweep spec {where}: unknown key(s) {[f'{name}.{k}' for k in unknown]}: allowed are "
                         f"{[f'{name}.{k}' for k in defaults]}")
    return {**defaults, **table}


def validate_spec(raw: Mapping, where: str = "<spec>") -> dict:
    """A normalized copy of `raw` with every default filled; one-line ValueError naming the bad key."""
    from nvcim.data import DATASETS
    from nvcim.methods import METHODS
    from nvcim.models import list_models
    from nvcim.train import FIELDS, TrainConfig, check_model_fits_data

    if not isinstance(raw, Mapping):
        raise ValueError(f"sweep spec {where} must be a mapping of keys, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"sweep spec {where}: unknown key(s) {unknown}: allowed keys are {list(SPEC_KEYS)}")
    for key in ("models", "datasets", "sigmas", "seeds"):
        if key not in raw:
            raise ValueError(f"sweep spec {where}: key {key!r} is missing: it is required")
    spec: dict[str, Any] = {}
    name = raw.get("name", "sweep")
    if not isinstance(name, str) or not name.strip():
        raise _err(where, "name", name, "a non-empty string")
    spec["name"] = name
    if "description" in raw:
        if not isinstance(raw["description"], str):
            raise _err(where, "description", raw["description"], "a string")
        spec["description"] = raw["description"]
    spec["models"] = _str_list(raw, "models", where, list_models())
    width = raw.get("width", 1.0)
    if not _is_num(width) or width <= 0:
        raise _err(where, "width", width, "a finite number > 0")
    spec["width"] = float(width)
    spec["datasets"] = _str_list(raw, "datasets", where, list(DATASETS))
    if "methods" in raw:
        spec["methods"] = _str_list(raw, "methods", where, sorted(METHODS))
    elif raw.get("variants"):
        spec["methods"] = []
    else:
        raise ValueError(f"sweep spec {where}: key 'methods' is missing: give methods from {sorted(METHODS)} or [[variants]]")
    spec["sigmas"] = sorted(_num_list(raw, "sigmas", where))
    spec["seeds"] = _num_list(raw, "seeds", where, integer=True)
    spec["betas"] = sorted(_num_list(raw, "betas", where), reverse=True) if "betas" in raw else None

    # fixed method hyper-parameters, per method
    mp = raw.get("method_params", {})
    if not isinstance(mp, Mapping):
        raise _err(where, "method_params", mp, "a table of tables: [method_params.ovf] n_variational = 3")
    spec["method_params"] = {}
    for m, params in mp.items():
        if m not in METHODS:
            raise ValueError(f"sweep spec {where}: key 'method_params': unknown method {m!r}: use one of {sorted(METHODS)}")
        if not isinstance(params, Mapping):
            raise _err(where, f"method_params.{m}", params, "a table of that method's hyper-parameters")
        if "beta" in params and m == "ovf" and spec["betas"] is not None:
            raise ValueError(f"sweep spec {where}: key 'method_params.ovf.beta' conflicts with 'betas': give one of them")
        _method_params_ok(m, params, f"{where}: key 'method_params.{m}'")
        spec["method_params"][m] = dict(params)

    # [train]
    tr = raw.get("train", {})
    if not isinstance(tr, Mapping):
        raise _err(where, "train", tr, "a table of training config fields")
    bad = sorted(set(tr) & set(SWEEP_SET))
    if bad:
        raise ValueError(f"sweep spec {where}: key(s) {['train.' + k for k in bad]} are set by the sweep per cell: "
                         "use models/width/datasets/methods/sigmas/seeds/variants/[resources] instead")
    unknown = sorted(set(tr) - set(FIELDS))
    if unknown:
        raise ValueError(f"sweep spec {where}: unknown key(s) {['train.' + k for k in unknown]}: allowed are "
                         f"{[f for f in FIELDS if f not in SWEEP_SET]}")
    try:
        probe = TrainConfig.from_dict({**tr, "model": spec["models"][0], "dataset": spec["datasets"][0],
                                       "method": "vanilla", "progress": False})
    except ValueError as exc:
        raise ValueError(f"sweep spec {where}: [train]: {str(exc).splitlines()[0]}") from None
    spec["train"] = dict(tr)

    # [eval]
    e = _table_with_defaults(raw, "eval", EVAL_DEFAULTS, where)
    for key, lo in (("runs", 1), ("seed", 0), ("val_runs", 1), ("val_seed", 0), ("batch_size", 1)):
        if not _is_int(e[key]) or e[key] < lo:
            raise _err(where, f"eval.{key}", e[key], f"an integer >= {lo}")
    if not isinstance(e["keep_beta_checkpoints"], bool):
        raise _err(where, "eval.keep_beta_checkpoints", e["keep_beta_checkpoints"], "true or false")
    n_cal = e["bn_calibration_images"]
    if not _is_int(n_cal) or n_cal < 0 or n_cal == 1:
        raise _err(where, "eval.bn_calibration_images", n_cal, "0 (off) or an integer >= 2")
    if n_cal == 0:  # off: absent, so that sweep directories made before the key existed still resume
        del e["bn_calibration_images"]
    ts = e["test_sigmas"]
    if isinstance(ts, str):
        if ts not in ("train", "grid"):
            raise _err(where, "eval.test_sigmas", ts, "'train', 'grid' or a list of σ >= 0")
    else:
        e["test_sigmas"] = sorted(_num_list({"eval.test_sigmas": ts}, "eval.test_sigmas", where))
    spec["eval"] = e

    # [resources]
    r = _table_with_defaults(raw, "resources", RESOURCE_DEFAULTS, where)
    if r["threads_per_cell"] is not None and (not _is_int(r["threads_per_cell"]) or r["threads_per_cell"] < 1):
        raise _err(where, "resources.threads_per_cell", r["threads_per_cell"], "an integer >= 1")
    if not _is_num(r["cpus_per_cell"]) or r["cpus_per_cell"] <= 0:
        raise _err(where, "resources.cpus_per_cell", r["cpus_per_cell"], "a number > 0")
    if r["gpus_per_cell"] is None:
        r["gpus_per_cell"] = 1 if probe.device == "cuda" else 0
    if not _is_num(r["gpus_per_cell"]) or r["gpus_per_cell"] < 0:
        raise _err(where, "resources.gpus_per_cell", r["gpus_per_cell"], "a number >= 0")
    spec["resources"] = r

    # [[variants]]
    vs = raw.get("variants", [])
    if not isinstance(vs, list):
        raise _err(where, "variants", vs, "an array of tables [[variants]] with label, method, params")
    spec["variants"] = []
    arms = {m.casefold(): m for m in sorted(METHODS)}  # directory name, case folded -> the arm's label
    for i, v in enumerate(vs):
        w = f"{where}: variants[{i}]"
        if not isinstance(v, Mapping):
            raise ValueError(f"sweep spec {w} is invalid: use a table with keys {list(VARIANT_KEYS)}")
        unknown = sorted(set(v) - set(VARIANT_KEYS))
        if unknown:
            raise ValueError(f"sweep spec {w}: unknown key(s) {unknown}: allowed are {list(VARIANT_KEYS)}")
        label, method, params = v.get("label"), v.get("method"), v.get("params", {})
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"sweep spec {w}: key 'label'={label!r} is invalid: use a non-empty string")
        if method not in METHODS:
            raise ValueError(f"sweep spec {w}: key 'method'={method!r} is unknown: use one of {sorted(METHODS)}")
        if not isinstance(params, Mapping):
            raise ValueError(f"sweep spec {w}: key 'params'={params!r} is invalid: use a table of method parameters")
        merged = {**spec["method_params"].get(method, {}), **params}
        _method_params_ok(method, merged, f"{w}: key 'params'")
        slug = label_slug(label)
        if slug.startswith(".") or len(slug) > LABEL_MAX:
            raise ValueError(f"sweep spec {w}: key 'label'={label!r} cannot name a directory ({slug!r}): use at most "
                             f"{LABEL_MAX} letters, digits and . _ + -, not starting with '.'")
        if slug.casefold() in arms:
            raise ValueError(f"sweep spec {w}: key 'label'={label!r} clashes with {arms[slug.casefold()]!r} (both are "
                             f"directory {slug!r}, case aside): use a unique label that is not a method name")
        arms[slug.casefold()] = label
        spec["variants"].append({"label": label, "method": method, "params": dict(params)})
    if not spec["methods"] and not spec["variants"]:
        raise ValueError(f"sweep spec {where}: no arms: give 'methods' or [[variants]]")
    cells = expand(spec)  # validates every cell's TrainConfig (one-line error naming the cell)
    if not cells:
        raise ValueError(f"sweep spec {where}: the grid is empty")
    fits = {(c.model, c.dataset): c for c in cells}
    for c in fits.values():  # every model builds for every data set's images, before any data are fetched
        try:
            check_model_fits_data(c.train_config())
        except ValueError as exc:
            raise ValueError(f"sweep spec {where}: {exc}") from None
    if any(c.betas for c in cells) and probe.val_fraction <= 0:
        raise ValueError(f"sweep spec {where}: key 'train.val_fraction'={probe.val_fraction!r} leaves no validation "
                         "split for the β search: use a value in (0, 1)")
    return spec


# ---- cells ------------------------------------------------------------------------------------------
def label_slug(label: str) -> str:
    """A label made safe as one path component: anything but [A-Za-z0-9._+-] becomes '_'."""
    return _LABEL_SAFE.sub("_", label.strip())


def fmt_num(x: float) -> str:
    """σ for ids: two decimals when exact (0.30), else the shortest round-tripping form."""
    s = f"{x:.2f}"
    return s if float(s) == x else repr(float(x))


def fmt_beta(b: float) -> str:
    return format(float(b), "g") if float(format(float(b), "g")) == b else repr(float(b))


@dataclass(frozen=True)
class Cell:
    """One trained model (or β search) and its test evaluation."""

    id: str
    model: str
    width: float
    dataset: str
    method: str
    label: str
    params: dict  # fixed method parameters (β excluded when searching)
    sigma: float | None  # training σ; None for vanilla
    seed: int
    test_sigmas: list
    betas: list | None  # β candidates (a search) or None
    train: dict  # full TrainConfig dict (σ, seed, method params of a non-search cell included)
    eval: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Cell":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})

    def train_config(self, beta: float | None = None):
        from nvcim.train import TrainConfig

        d = dict(self.train)
        if beta is not None:
            d["method_params"] = {**d["method_params"], "beta": float(beta)}
        return TrainConfig.from_dict(d)


def _arms(spec: Mapping) -> list[tuple[str, str, dict]]:
    """(label, method, fixed params) of every arm: the methods, then the variants."""
    arms = [(m, m, dict(spec["method_params"].get(m, {}))) for m in spec["methods"]]
    for v in spec["variants"]:
        arms.append((v["label"], v["method"], {**spec["method_params"].get(v["method"], {}), **v["params"]}))
    return arms


def expand(spec: Mapping) -> list[Cell]:
    """Every cell of a validated spec, in a stable order (model, dataset, arm, σ, seed)."""
    from nvcim.train import TrainConfig

    cells: list[Cell] = []
    seen: dict[str, str] = {}  # cell directory, case folded (case-insensitive file systems) -> its arm's label
    ev = spec["eval"]
    grid = list(spec["sigmas"])
    for model in spec["models"]:
        for dataset in spec["datasets"]:
            prefix = f"{model}-w{spec['width']:g}/{dataset}"
            for label, method, params in _arms(spec):
                search = None
                if method == "ovf" and "beta" not in params and spec["betas"] is not None:
                    if len(spec["betas"]) > 1:
                        search = list(spec["betas"])
                    else:
                        params = {**params, "beta": spec["betas"][0]}
                slug = label_slug(label)
                sigmas = [None] if method == "vanilla" else grid
                for sigma in sigmas:
                    if isinstance(ev["test_sigmas"], list):
                        tests = list(ev["test_sigmas"])
                    elif sigma is None or ev["test_sigmas"] == "grid":
                        tests = grid
                    else:
                        tests = [sigma]
                    for seed in spec["seeds"]:
                        cid = (f"{prefix}/{slug}/seed{seed}" if sigma is None
                               else f"{prefix}/{slug}/s{fmt_num(sigma)}/seed{seed}")
                        if cid.casefold() in seen:
                            raise ValueError(f"sweep spec: labels {seen[cid.casefold()]!r} and {label!r} give cells the "
                                             f"same directory {cid!r} (case aside): make the labels unique")
                        seen[cid.casefold()] = label
                        tparams = dict(params)
                        if search:
                            tparams["beta"] = search[0]  # validated here; each candidate sets its own
                        try:
                            tc = TrainConfig.from_dict({
                                **spec["train"], "model": model, "width": spec["width"], "dataset": dataset,
                                "method": method, "method_params": tparams,
                                # vanilla: no noise in training; its validation runs at σ = 0
                                "sigma": 0.0 if sigma is None else sigma, "seed": seed, "progress": False,
                            })
                        except ValueError as exc:
                            raise ValueError(f"sweep spec: cell {cid}: {str(exc).splitlines()[0]}") from None
                        tdict = tc.to_dict()
                        if search:
                            tdict["method_params"] = {k: v for k, v in tdict["method_params"].items() if k != "beta"}
                        cells.append(Cell(
                            id=cid, model=model, width=spec["width"], dataset=dataset, method=method, label=label,
                            params={k: v for k, v in tparams.items() if not (search and k == "beta")},
                            sigma=sigma, seed=seed, test_sigmas=tests, betas=search, train=tdict,
                            eval={k: ev[k] for k in ("runs", "seed", "val_runs", "val_seed", "batch_size",
                                                     "keep_beta_checkpoints", "bn_calibration_images") if k in ev},
                        ))
    return cells


# ---- files ------------------------------------------------------------------------------------------
def cell_dir(out_dir, cell_id: str) -> Path:
    return Path(out_dir) / "cells" / cell_id


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def result_problem(out_dir, cell_id: str) -> str | None:
    """Why the cell's result.json, when there is one, is not a finished result of this cell (None: it is,
    or there is none): not valid JSON (truncated, damaged), not an mc_eval result, no results, another
    cell's. Such a cell is not done: it runs again."""
    file = cell_dir(out_dir, cell_id) / RESULT_FILE
    if not file.is_file():
        return None
    try:
        payload = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"{RESULT_FILE} is not valid JSON ({_first_line(exc)})"
    if not isinstance(payload, dict) or payload.get("kind") != "mc_eval":
        return f"{RESULT_FILE} is not an mc_eval result"
    results = payload.get("results")
    if (not isinstance(results, list) or not results
            or not all(isinstance(r, dict) and _is_num(r.get("sigma")) and _is_num(r.get("mean")) for r in results)):
        return f"{RESULT_FILE} has no complete 'results' list"
    if not isinstance(payload.get("cell"), dict) or payload["cell"].get("id") != cell_id:
        return f"{RESULT_FILE} is not this cell's"
    return None


def cell_state(out_dir, cell_id: str) -> str:
    """'done' (a valid result.json, see result_problem), 'failed' (failed.json) or 'pending'."""
    d = cell_dir(out_dir, cell_id)
    if (d / RESULT_FILE).is_file() and result_problem(out_dir, cell_id) is None:
        return "done"
    if (d / FAILED_FILE).is_file():
        return "failed"
    return "pending"


def _write_json(path: Path, payload: Any) -> Path:
    from nvcim.evaluate import write_results_json

    return write_results_json(path, payload)


def _clean_temps(d: Path) -> None:
    """Remove leftovers of writes a kill interrupted (hidden temp files and dirs) under `d`."""
    if not d.is_dir():
        return
    for p in sorted(d.rglob(".*"), key=lambda p: ".old-" in p.name):  # temps first, then previous copies
        if p.name in (LOCK_FILE, TOKEN_FILE) or not (".tmp" in p.name or ".old-" in p.name):
            continue
        original = p.parent / p.name[1:].split(".old-")[0]
        if ".old-" in p.name and not original.exists():  # killed between a save's two renames: put it back
            os.replace(p, original)
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def prepare_cell_dir(out_dir, cell: Cell, threads: int) -> Path:
    """Make the cell's directory ready to (re)run: wipe it if it holds another definition's partial
    work, drop temp leftovers, an old failed.json and an unreadable result.json, and write cell.json."""
    d = cell_dir(out_dir, cell.id)
    want = {**cell.to_dict(), "threads": threads}
    if d.is_dir():
        try:
            have = json.loads((d / CELL_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            have = None
        if have != json.loads(json.dumps(want)):
            shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    _clean_temps(d)
    (d / FAILED_FILE).unlink(missing_ok=True)
    if result_problem(out_dir, cell.id):  # a damaged result of this cell: the run writes a new one
        (d / RESULT_FILE).unlink()
    if not (d / CELL_FILE).is_file():
        atomic_write_text(d / CELL_FILE, json.dumps(want, indent=2) + "\n")  # Python JSON: round-trips exactly
    return d


def _partial_work_of_other_threads(out: Path, cells: Sequence[Cell], threads: int) -> list[tuple[str, Any]]:
    """(cell id, its threads) of unfinished cells whose partial work differs from `cells` only in the thread
    count: prepare_cell_dir will wipe it, which the user should hear about."""
    found = []
    for c in cells:
        try:
            have = json.loads((cell_dir(out, c.id) / CELL_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(have, dict) or have.get("threads") == threads:
            continue
        if {k: v for k, v in have.items() if k != "threads"} == json.loads(json.dumps(c.to_dict())):
            found.append((c.id, have.get("threads")))
    return found


def _link_or_copy_dir(src: Path, dst: Path) -> None:
    """Atomically make `dst` a copy of directory `src` (files hard-linked when possible; the directory gets the
    usual permissions, not mkdtemp's 0700)."""
    from nvcim.fileio import current_umask

    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        for f in src.iterdir():
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)
        old = None
        if dst.exists():  # move aside first: a kill never leaves a half-deleted `dst`
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
            os.rmdir(old)
            os.replace(dst, old)
        os.replace(tmp, dst)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---- running one cell -----------------------------------------------------------------------------------
_SPLITS_CACHE: dict[tuple, Any] = {}


def _splits(tc):
    from nvcim.data import load_dataset

    key = (tc.dataset, tc.data_root, tc.val_fraction, tc.limit, tc.data_seed)
    if key not in _SPLITS_CACHE:
        if len(_SPLITS_CACHE) >= 2:
            _SPLITS_CACHE.clear()
        _SPLITS_CACHE[key] = load_dataset(tc.dataset, tc.data_root, val_fraction=tc.val_fraction, seed=tc.data_seed,
                                          limit=tc.limit)
    return _SPLITS_CACHE[key]


class CellDiverged(RuntimeError):
    pass


def _train_or_load(tc, ckpt: Path, splits):
    """(model, metrics, wall seconds spent training now) — reusing a finished checkpoint at `ckpt`."""
    from nvcim import train as _train
    from nvcim.checkpoint import CONFIG_FILE, CheckpointError, load_checkpoint

    if (ckpt / CONFIG_FILE).is_file():
        try:
            model, config = load_checkpoint(ckpt)
        except CheckpointError:  # damaged outside nvcim's atomic writes: train again
            shutil.rmtree(ckpt, ignore_errors=True)
        else:
            model.eval()
            return model, dict(config.get("metrics") or {}), 0.0
    t0 = time.perf_counter()
    res = _train.train(tc, out_dir=ckpt, splits=splits)
    return res.model, dict(res.metrics), time.perf_counter() - t0


def _diverged_msg(metrics: Mapping) -> str | None:
    if metrics.get("status") == "diverged":
        at = metrics.get("diverged_at") or {}
        reason = metrics.get("diverged_reason") or "non-finite loss"
        return f"training diverged ({reason}) at epoch {at.get('epoch')} step {at.get('step')}"
    return None


def _chip_calibration(cell: Cell, model, splits):
    """The per-chip BatchNorm calibration of `cell` (eval.bn_calibration_images), or None when off."""
    from nvcim.batchnorm import CALIBRATION_BATCH, ChipCalibration, batchnorm_layers

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
    from nvcim.batchnorm import recalibration_record

    n = cell.eval.get("bn_calibration_images", 0)
    return recalibration_record("each chip", n, len(splits.train)) if n else None


def _beta_search(cell: Cell, d: Path, splits, dev) -> tuple[float, dict, float]:
    """Train / score every β candidate (resumable per β); returns (chosen β, record, train seconds)."""
    from nvcim import evaluate as _evaluate

    scores = []
    train_s = 0.0
    for beta in cell.betas:
        bd = d / "beta" / fmt_beta(beta)
        score_file = bd / SCORE_FILE
        done = _read_score(score_file, beta)
        if done is not None:
            scores.append(done)
            continue
        bd.mkdir(parents=True, exist_ok=True)
        tc = cell.train_config(beta)
        model, metrics, secs = _train_or_load(tc, bd / "checkpoint", splits)
        train_s += secs
        rec = {"beta": float(beta), "status": metrics.get("status", "ok"), "val_mean": None, "val_std": None,
               "val_runs": cell.eval["val_runs"], "val_seed": cell.eval["val_seed"], "split": "val",
               "n_val": len(splits.val), "train_wall_time_s": metrics.get("wall_time_s"),
               "checkpoint": str(Path("beta") / fmt_beta(beta) / "checkpoint")}
        if _diverged_msg(metrics) is None:
            val = _evaluate.monte_carlo_evaluate(model, splits.val, tc.device_cfg(), runs=cell.eval["val_runs"],
                                                 seed=cell.eval["val_seed"], batch_size=cell.eval["batch_size"],
                                                 device=dev, bn_calibration=_chip_calibration(cell, model, splits))
            rec["val_mean"], rec["val_std"] = val.mean, (val.std if math.isfinite(val.std) else None)
        else:
            rec["error"] = _diverged_msg(metrics)
        _write_json(score_file, rec)
        scores.append(rec)
    eligible = [s for s in scores if s["val_mean"] is not None]
    if not eligible:
        raise CellDiverged(f"β search: every candidate diverged ({[s['beta'] for s in scores]})")
    best = max(eligible, key=lambda s: (s["val_mean"], s["beta"]))  # ties → larger β
    record = {"chosen_beta": best["beta"], "criterion": "val_mc_mean", "tie_break": "larger beta",
              "split": "val", "val_runs": cell.eval["val_runs"], "val_seed": cell.eval["val_seed"],
              "sigma": cell.sigma, "candidates": scores}
    return best["beta"], record, train_s


def _read_score(path: Path, beta: float) -> dict | None:
    """A β candidate's score.json, or None when it is absent or unreadable (the candidate is scored again)."""
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("beta") != float(beta) or not ("val_mean" in rec and "status" in rec):
        return None
    if rec["val_mean"] is not None and not _is_num(rec["val_mean"]):
        return None
    return rec


def run_cell(cell: Cell | Mapping, out_dir, threads: int) -> dict:
    """Run one cell into `out_dir` (train or resume, β search, test evaluation, result.json).

    Never raises for a failing cell: failed.json is written instead. Returns a one-cell summary
    {"id", "status": "ok"|"failed", "error", "wall_time_s", "mean" (first test σ), "beta"}.
    """
    import torch

    if not isinstance(cell, Cell):
        cell = Cell.from_dict(cell)
    t0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    d = prepare_cell_dir(out_dir, cell, threads)
    try:
        payload = _run_cell(cell, Path(out_dir), d, threads, t0)
        return {"id": cell.id, "status": "ok", "error": None, "wall_time_s": payload["cell"]["wall_time_s"],
                "mean": payload["results"][0]["mean"], "sigma": payload["results"][0]["sigma"],
                "beta": (payload["cell"]["beta_search"] or {}).get("chosen_beta")}
    except Exception as exc:  # recorded, the sweep goes on
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        msg = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
        wall = time.perf_counter() - t0
        _write_json(d / FAILED_FILE, {
            "kind": "sweep_cell_failed", "nvcim_version": _version(),
            "cell": {**cell.to_dict(), "threads": threads, "wall_time_s": wall},
            "error": msg, "traceback": traceback.format_exc(),
        })
        return {"id": cell.id, "status": "failed", "error": msg, "wall_time_s": wall, "mean": None, "sigma": None,
                "beta": None}
    finally:
        torch.set_num_threads(old_threads)


def _version() -> str:
    import nvcim

    return nvcim.__version__


def _run_cell(cell: Cell, out: Path, d: Path, threads: int, t0: float) -> dict:
    from nvcim import evaluate as _evaluate
    from nvcim.checkpoint import read_checkpoint_config
    from nvcim.train import resolve_device

    tc = cell.train_config(cell.betas[0] if cell.betas else None)
    splits = _splits(tc)
    dev = resolve_device(tc.device)
    ckpt = d / "checkpoint"
    beta_record = None
    train_s = 0.0
    if cell.betas:
        beta, beta_record, train_s = _beta_search(cell, d, splits, dev)
        tc = cell.train_config(beta)
        src = d / "beta" / fmt_beta(beta) / "checkpoint"
        have = None
        if (ckpt / "config.json").is_file():
            have = (read_checkpoint_config(ckpt).get("method") or {}).get("beta")
        if have != beta:
            _link_or_copy_dir(src, ckpt)
    model, metrics, secs = _train_or_load(tc, ckpt, splits)
    train_s += secs
    bad = _diverged_msg(metrics)
    if bad:
        raise CellDiverged(bad)
    t_eval = time.perf_counter()
    results = _evaluate.robustness_curve(model, splits.test, tc.device_cfg(), cell.test_sigmas,
                                         runs=cell.eval["runs"], seed=cell.eval["seed"],
                                         batch_size=cell.eval["batch_size"], device=dev,
                                         bn_calibration=_chip_calibration(cell, model, splits))
    eval_s = time.perf_counter() - t_eval
    payload = result_payload(cell, out, ckpt, tc, results, threads=threads, beta_search=beta_record,
                             wall=time.perf_counter() - t0, train_s=train_s, eval_s=eval_s, metrics=metrics,
                             bn_recalibration=_calibration_record(cell, splits))
    _write_json(d / RESULT_FILE, payload)  # the cell is done from here on
    if cell.betas and not cell.eval["keep_beta_checkpoints"]:
        for sub in (d / "beta").glob("*/checkpoint"):
            shutil.rmtree(sub, ignore_errors=True)
    return payload


def result_payload(cell: Cell, out: Path, ckpt: Path, tc, results, *, threads, beta_search, wall, train_s, eval_s,
                   metrics, bn_recalibration: dict | None = None) -> dict:
    """result.json: {"kind": "mc_eval", "nvcim_version", "checkpoint" (relative to the sweep dir),
    "checkpoint_config", "dataset", "split": "test", "device_config" (its σ is the first test σ;
    every result carries its own), "bn_recalibration" (None, or per-chip calibration as `nvcim eval`
    records it), "results": [MCResult.to_dict() per test σ], "cell": {...}}."""
    from nvcim.checkpoint import read_checkpoint_config

    params = dict(cell.train_config().method_params) if not cell.betas else dict(tc.method_params)
    return {
        "kind": "mc_eval",
        "nvcim_version": _version(),
        "checkpoint": ckpt.relative_to(out).as_posix(),
        "checkpoint_config": read_checkpoint_config(ckpt),
        "dataset": cell.dataset,
        "split": "test",
        "device_config": tc.device_cfg(sigma=cell.test_sigmas[0]).to_dict(),
        "bn_recalibration": bn_recalibration,
        "results": [r.to_dict() for r in results],
        "cell": {
            "id": cell.id, "model": cell.model, "width": cell.width, "dataset": cell.dataset,
            "method": cell.method, "label": cell.label, "params": params, "sigma": cell.sigma, "seed": cell.seed,
            "test_sigmas": list(cell.test_sigmas), "threads": threads, "train_status": metrics.get("status", "ok"),
            "wall_time_s": wall, "train_wall_time_s": train_s, "eval_wall_time_s": eval_s,
            "beta_search": beta_search,
        },
    }


# ---- the sweep ----------------------------------------------------------------------------------------
def default_threads(workers: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def _canonical(spec: Mapping) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


def prepare_out_dir(spec: Mapping, out_dir, *, force: bool = False, spec_text: str | None = None,
                    spec_suffix: str = ".toml") -> Path:
    """Create DIR, refuse another spec's DIR (unless force), record spec.json (+ the original text)."""
    out = Path(out_dir)
    check_sweep_dir(spec, out, force=force)
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / SPEC_JSON
    _write_json(spec_file, spec)
    if spec_text is not None and spec_suffix != ".json":
        atomic_write_text(out / f"spec{spec_suffix}", spec_text)
    return out


def check_sweep_dir(spec: Mapping, out_dir, *, force: bool = False) -> None:
    """Refuse (ValueError, one line) a DIR that is a file or, unless force, holds another spec's cells;
    reads only."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"sweep output {out} is a file: choose a directory")
    spec_file = out / SPEC_JSON
    if spec_file.is_file():
        try:
            old = json.loads(spec_file.read_text(encoding="utf-8"))
        except ValueError:
            old = None
        if _canonical(old) != _canonical(json.loads(json.dumps(spec))) and not force:
            name = old.get("name") if isinstance(old, dict) else "?"
            raise ValueError(f"sweep output {out} holds cells of another spec ({name!r}, see {spec_file}): "
                             "choose another --out, or pass --force to run this spec there")
    elif (out / "cells").is_dir() and any((out / "cells").iterdir()) and not force:
        raise ValueError(f"sweep output {out} holds cells but no {SPEC_JSON}: choose another --out or pass --force")


def _refuse_stale(out: Path, done: Sequence[Cell]) -> None:
    stale = stale_cells(out, done)
    if stale:
        c, keys = stale[0]
        raise ValueError(f"sweep output {out}: {len(stale)} finished cell(s) were made by another definition "
                         f"(first: {c.id}, {', '.join(keys)} differ), so their results do not match this spec: "
                         "choose another --out, or delete those cell directories to run them again")


def check_data(cells: Sequence[Cell]) -> None:
    """Raise nvcim.data.DatasetNotFoundError (one line: which files to put where) unless the data set of
    every cell is on disk; missing ones are downloaded first where a network is there, as training would
    (once, not once per cell). File names only, so a sweep checks its data before any cell runs."""
    from nvcim.data import check_dataset

    for dataset, root in sorted({(c.dataset, c.train.get("data_root")) for c in cells}, key=str):
        check_dataset(dataset, root, download=True)


@contextlib.contextmanager
def sweep_lock(out: Path):
    """Exclusive lock on the sweep directory (released by the OS if the process dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ValueError(f"sweep output {out} is in use by another running sweep: wait for it or use another --out") from None
        yield
    finally:
        os.close(fd)


@dataclass
class SweepSummary:
    total: int
    done_before: int
    ok: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # failed in this run
    failed_before: list = field(default_factory=list)  # failed earlier, not retried
    wall_time_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if (self.failed or self.failed_before) else 0


def plan(spec: Mapping, out_dir, *, retry_failed: bool = False) -> tuple[list[Cell], list[Cell], list[Cell], list[Cell]]:
    """(all cells, to run, done, failed and not retried)."""
    cells = expand(spec)
    todo, done, failed = [], [], []
    for c in cells:
        st = cell_state(out_dir, c.id)
        if st == "done":
            done.append(c)
        elif st == "failed" and not retry_failed:
            failed.append(c)
        else:
            todo.append(c)
    return cells, todo, done, failed


def stale_cells(out_dir, done: Sequence[Cell]) -> list[tuple[Cell, list[str]]]:
    """Finished cells whose recorded definition (cell.json, threads aside) differs from this spec's cell
    of the same id, with the differing keys: e.g. a vanilla cell tested at fewer σ before the grid grew."""
    stale = []
    for c in done:
        try:
            have = json.loads((cell_dir(out_dir, c.id) / CELL_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # no readable definition: nothing to compare
        if not isinstance(have, dict):
            continue
        have.pop("threads", None)
        want = json.loads(json.dumps(c.to_dict()))
        keys = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        if keys:
            stale.append((c, keys))
    return stale


def _log_line(n: int, total: int, s: Mapping) -> str:
    if s["status"] == "ok":
        extra = f" β={s['beta']:g}" if s.get("beta") is not None else ""
        return (f"[{n}/{total}] ok     {s['id']}: σ={s['sigma']:g} mean {s['mean']:.2f}%{extra} "
                f"({s['wall_time_s']:.1f} s)")
    return f"[{n}/{total}] FAILED {s['id']}: {s['error']} ({s['wall_time_s']:.1f} s)"


def run_sweep(spec: Mapping, out_dir, *, backend: str = "local", workers: int = 1, address: str | None = None,
              retry_failed: bool = False, force: bool = False, progress: bool = True, spec_text: str | None = None,
              spec_suffix: str = ".toml") -> SweepSummary:
    """Run every pending cell of `spec` into `out_dir`; see the module docstring for the layout.

    Before anything is written, DIR (another spec's, stale cells) and the data of the cells to run are
    checked: a missing data set is downloaded once where a network is there, else a one-line
    nvcim.data.DatasetNotFoundError is raised and no cell runs."""
    from nvcim import backends

    if backend not in backends.BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown: use one of {list(backends.BACKENDS)}")
    if not _is_int(workers) or workers < 1:
        raise ValueError(f"workers={workers!r} is invalid: use an integer >= 1")
    t0 = time.perf_counter()
    out = check_output_path(out_dir, "sweep output", is_dir=True)
    # every input checked before anything is written or downloaded (checked again under the lock)
    check_sweep_dir(spec, out, force=force)
    _, todo, done, _ = plan(spec, out, retry_failed=retry_failed)
    _refuse_stale(out, done)
    if backend == "local" or address is None:  # a Ray cluster's machines hold their own data
        check_data(todo)
    out.mkdir(parents=True, exist_ok=True)
    with sweep_lock(out):  # before spec.json is touched: --force must not rewrite a running sweep's spec
        prepare_out_dir(spec, out, force=force, spec_text=spec_text, spec_suffix=spec_suffix)
        cells, todo, done, failed_before = plan(spec, out, retry_failed=retry_failed)
        _refuse_stale(out, done)
        damaged = [(c.id, problem) for c in todo if (problem := result_problem(out, c.id))]
        summary = SweepSummary(total=len(cells), done_before=len(done), failed_before=[c.id for c in failed_before])
        pinned = spec["resources"]["threads_per_cell"]
        threads = pinned or default_threads(workers)
        redo = [] if backend == "ray" else _partial_work_of_other_threads(out, todo, threads)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cells), initial=len(done) + len(failed_before), unit="cell", desc=spec["name"],
                   file=sys.stderr, disable=not progress, dynamic_ncols=True)
        say = (lambda m: tqdm.write(m, file=sys.stderr)) if progress else (lambda m: None)
        if failed_before:
            say(f"{len(failed_before)} cell(s) failed earlier and are not retried (pass --retry-failed)")
        for cid, problem in damaged:
            say(f"warning: cell {cid}: {problem}: it is not counted as done and runs again")
        if redo:
            say(f"warning: {len(redo)} unfinished cell(s) (first: {redo[0][0]}) hold partial work made with "
                f"{redo[0][1]} thread(s) per cell, this run uses {threads}: it is redone from scratch so that "
                "results stay bitwise reproducible (to keep it, stop and rerun with the earlier --workers, "
                "or pin [resources] threads_per_cell)")
        counter = [len(done) + len(failed_before)]

        def on_done(s: Mapping) -> None:
            counter[0] += 1
            (summary.ok if s["status"] == "ok" else summary.failed).append(s["id"])
            bar.update(1)
            say(_log_line(counter[0], len(cells), s))

        try:
            if todo:
                if backend == "ray":
                    backends.run_ray(todo, out, spec, on_done, workers=workers, address=address, threads=pinned)
                elif workers == 1:
                    for c in todo:
                        on_done(run_cell(c, out, threads))
                else:
                    backends.run_pool(todo, out, on_done, workers=workers, threads=threads)
        finally:
            bar.close()
    summary.wall_time_s = time.perf_counter() - t0
    return summary


__all__ = [
    "Cell",
    "SweepSummary",
    "load_spec",
    "read_spec_file",
    "validate_spec",
    "expand",
    "plan",
    "stale_cells",
    "run_cell",
    "run_sweep",
    "cell_dir",
    "cell_state",
    "result_problem",
    "check_data",
    "check_sweep_dir",
    "label_slug",
    "default_threads",
]
