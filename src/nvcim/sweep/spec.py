"""Sweep specs: reading a spec file and validating it into a SweepSpec (nvcim.sweep.schema), defaults filled.

    spec = load_spec("experiments/cpu/mnist5k.toml")   # TOML / YAML / JSON; the name defaults to the stem
    spec = validate_spec(raw_mapping, where="<spec>")   # one-line ValueError naming the bad key
    spec = validate_spec(raw, where, base_dir="experiments")  # device model files relative to base_dir

The keys (see experiments/README.md for each): SPEC_KEYS; [eval] over EVAL_DEFAULTS, [resources] over
RESOURCE_DEFAULTS, [train] any TrainConfig field but those the sweep sets per cell (SWEEP_SET),
[[variants]] tables of VARIANT_KEYS. Validation expands the grid (nvcim.sweep.cells.expand), so a
spec that validates has a TrainConfig for every cell and models that fit their data sets' images.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Mapping, Sequence

from nvcim.data import DATASETS, is_npz_name
from nvcim.evaluate.adaptive import MAX_RUNS, check_target_args
from nvcim.io.device_models import FILE_SUFFIXES, device_model_fields, list_device_models
from nvcim.io.files import read_mapping_file
from nvcim.methods import METHODS, method_config
from nvcim.models import list_models
from nvcim.sweep.cells import LABEL_MAX, device_config_of, digital_layers_of, expand, is_int, is_num, label_slug
from nvcim.sweep.files import recorded_name
from nvcim.sweep.schema import EVAL_DEFAULTS, RESOURCE_DEFAULTS, TARGET_KEYS, SweepSpec
from nvcim.train import FIELDS, TrainConfig, check_model_fits_data
from nvcim.train.config import MAX_THREADS, device_key_conflicts

SPEC_KEYS = ("name", "models", "width", "datasets", "methods", "sigmas", "seeds", "betas", "train", "eval",
             "method_params", "variants", "resources", "description", "device_models")
VARIANT_KEYS = ("label", "method", "params")
REQUIRED_KEYS = ("models", "datasets", "sigmas", "seeds")
# TrainConfig fields the sweep sets itself (per cell) and the [train] table may not hold
SWEEP_SET = ("model", "width", "dataset", "method", "method_params", "sigma", "seed", "progress", "num_threads")


def _err(where: str, key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"sweep spec {where}: key {key!r}={value!r} is invalid: use {allowed}")


def _check_target(given: Mapping, e: Mapping, where: str) -> None:
    """[eval] target_ci / max_chips / images_per_chip (the target-precision mode, instead of runs)."""
    if e["target_ci"] is None:
        extra = [k for k in ("max_chips", "images_per_chip") if e[k] is not None]
        if extra:
            raise ValueError(f"sweep spec {where}: key 'eval.{extra[0]}' needs eval.target_ci: give the 95 % CI "
                             "half-width to reach (e.g. target_ci = 0.5)")
        return
    if not is_num(e["target_ci"]) or not 0 < e["target_ci"] < float("inf"):
        raise _err(where, "eval.target_ci", e["target_ci"], "a 95 % CI half-width in accuracy points > 0 (e.g. 0.5)")
    if "runs" in given and not _recorded_eval(given):
        raise ValueError(f"sweep spec {where}: keys 'eval.runs' and 'eval.target_ci' both set the number of chips: "
                         "give one (eval.max_chips caps target_ci)")
    if e["max_chips"] is not None and (not is_int(e["max_chips"]) or e["max_chips"] < 2):
        raise _err(where, "eval.max_chips", e["max_chips"], "an integer >= 2")
    n = e["images_per_chip"]
    if n is not None and n != "auto" and (not is_int(n) or n < 1):
        raise _err(where, "eval.images_per_chip", n, "an integer >= 1 or 'auto'")
    try:  # the API's own checks too (e.g. the smallest target_ci), so that no cell fails on them after training
        check_target_args(e["target_ci"], e["max_chips"], e["images_per_chip"], None)
    except ValueError as exc:
        raise ValueError(f"sweep spec {where}: key eval.{exc}") from None


def _recorded_eval(given: Mapping) -> bool:
    """Whether an [eval] table with target_ci is as DIR/spec.json records it: every key EvalOptions always writes,
    `runs` at its default (unused beside target_ci). Written by hand, runs beside target_ci stays an error."""
    always = [k for k in EVAL_DEFAULTS if k not in TARGET_KEYS and k not in ("bn_calibration_images", "adc_calibration")]
    return all(k in given for k in always) and given["runs"] == EVAL_DEFAULTS["runs"]


def read_spec_file(path) -> dict:
    """The raw mapping of a spec file (.toml, .yaml/.yml or .json)."""
    return read_mapping_file(path, "sweep spec")


def load_spec(path) -> SweepSpec:
    """Read and validate a spec file; the name defaults to the file's stem, device model files are
    relative to the file's directory."""
    raw = read_spec_file(path)
    copied_from = recorded_name(path)  # not None: nvcim's copy of a spec, in the sweep directory it ran
    if raw.get("name") is None:  # absent or null: the name of the spec nvcim's copy was made of, else the file's
        raw["name"] = copied_from or Path(path).stem
    try:
        return validate_spec(raw, where=str(path), base_dir=Path(path).parent)
    except ValueError as e:
        if copied_from is None or "device model file" not in str(e) or "does not exist" not in str(e):
            raise
        raise ValueError(f"{e} (this is nvcim's copy of the spec, in the sweep directory, so a device file named "
                         f"relative to the original spec is not found beside it: rerun the original spec, or "
                         f"{Path(path).parent / 'spec.json'})") from None


def _str_list(raw: Mapping, key: str, where: str, allowed: Sequence[str], extra=None) -> list[str]:
    """A non-empty list of distinct names from `allowed` (or accepted by `extra(name)`, e.g. npz: data sets)."""
    v = raw[key]
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        raise _err(where, key, v, f"a non-empty list of names from {list(allowed)}")
    for x in v:
        if x not in allowed and not (extra is not None and extra(x)):
            more = {"datasets": ", or npz:PATH.npz for a data set file",
                    "models": " (a model of your own: pass --plugin FILE.py, or set NVCIM_PLUGINS)",
                    "methods": " (a method of your own: pass --plugin FILE.py)"}.get(key, "")
            raise ValueError(f"sweep spec {where}: key {key!r}: unknown name {x!r}: use one of {list(allowed)}{more}")
    if len(set(v)) != len(v):
        raise _err(where, key, v, "a list without duplicates")
    return list(v)


def _num_list(raw: Mapping, key: str, where: str, *, integer: bool = False) -> list:
    v = raw[key]
    if is_num(v):
        v = [v]
    what = "integers >= 0" if integer else "finite numbers >= 0"
    if not isinstance(v, list) or not v:
        raise _err(where, key, v, f"a non-empty list of {what}")
    for x in v:
        ok = (is_int(x) if integer else is_num(x)) and x >= 0
        if not ok:
            raise ValueError(f"sweep spec {where}: key {key!r}: value {x!r} is invalid: use {what}")
    out = [int(x) for x in v] if integer else [float(x) for x in v]
    if len(set(out)) != len(out):
        raise _err(where, key, v, "a list without duplicates")
    return out


def _method_params_ok(method: str, params: Mapping, where: str) -> None:
    try:
        method_config(method, **dict(params))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"sweep spec {where}: {str(exc).splitlines()[0]}") from None


def _guess_hint(keys, allowed, prefix: str = "") -> str:
    """" ('train.epoch': did you mean 'train.epochs'?)" for each unknown key with a close allowed one."""
    hints = []
    for k in keys:
        close = difflib.get_close_matches(str(k), [str(a) for a in allowed], n=1, cutoff=0.75)
        if close:
            hints.append(f" ({prefix + str(k)!r}: did you mean {prefix + close[0]!r}?)")
    return "".join(hints)


def _top_level_hint(keys) -> str:
    """For unknown keys of a table that are top-level spec keys (TOML puts every key after a [table] header into
    that table): where to move them."""
    top = [k for k in keys if k in SPEC_KEYS]
    one = len(top) == 1
    return (f"; {', '.join(map(repr, top))} {'is a top-level key' if one else 'are top-level keys'}: move "
            f"{'it' if one else 'them'} to the top level (in TOML, above the first [table] header)") if top else ""


def _table_with_defaults(raw: Mapping, name: str, defaults: Mapping, where: str) -> dict:
    """The spec's [name] table over its defaults; unknown keys are a one-line error."""
    table = raw.get(name, {})
    if not isinstance(table, Mapping):
        raise _err(where, name, table, "a table")
    unknown = sorted(set(table) - set(defaults))
    if unknown:
        raise ValueError(f"sweep spec {where}: unknown key(s) {[f'{name}.{k}' for k in unknown]}"
                         f"{_guess_hint(unknown, defaults, name + '.')}: allowed are "
                         f"{[f'{name}.{k}' for k in defaults]}{_top_level_hint(unknown)}")
    return {**defaults, **table}


def _device_models(raw: Mapping, where: str, base_dir, sigma: float, train: Mapping) -> dict[str, dict]:
    """The device-model axis: {name as given: the DeviceConfig fields it sets}, each name resolved now (a file
    relative to `base_dir` unless absolute) and built at `sigma` with the [train] table's bits. A table {name: fields},
    as DIR/spec.json records the axis, is taken as it is (its files are not read again): a recorded spec loads back."""
    v = raw["device_models"]
    if isinstance(v, Mapping):
        if not v or not all(isinstance(n, str) and n.strip() and isinstance(f, Mapping) for n, f in v.items()):
            raise _err(where, "device_models", v, "a non-empty list of device model names or files (or, as spec.json "
                       "records them, a table of name = {DeviceConfig fields})")
        readers = {name: (lambda f=fields: dict(f)) for name, fields in v.items()}
    else:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x.strip() for x in v):
            raise _err(where, "device_models", v, "a non-empty list of device model names (`nvcim eval "
                       "--list-device-models`) or .toml / .yaml / .json files of DeviceConfig fields")
        if len(set(v)) != len(v):
            raise _err(where, "device_models", v, "a list without duplicates")
        named = {n for n, _ in list_device_models()}

        def reader(name: str):
            target = Path(name.strip()).expanduser()
            filelike = target.suffix.lower() in FILE_SUFFIXES or len(target.parts) > 1  # else a name: said as given
            if name.strip() not in named and base_dir is not None and not target.is_absolute() and (
                    filelike or (Path(base_dir) / target).exists()):
                target = Path(base_dir) / target
            return lambda: device_model_fields(name if name.strip() in named else str(target), train.get("device_bits"))

        readers = {name: reader(name) for name in v}
    if "device_config" in train:
        raise ValueError(f"sweep spec {where}: key 'train.device_config' conflicts with 'device_models': give one of them")
    out = {}
    for name, read in readers.items():  # every entry read and built at `sigma`: one line naming the bad one
        try:
            fields = read()
            if "sigma" in fields:
                raise ValueError("it sets sigma, which the spec's 'sigmas' set per cell: drop sigma from it")
            device_config_of(name, fields, sigma, train)
        except ValueError as exc:
            raise ValueError(f"sweep spec {where}: key 'device_models': {name!r}: {str(exc).splitlines()[0]}") from None
        out[name] = fields
    return out


def _nulls_dropped(raw: Mapping) -> dict:
    """`raw` without the optional keys whose value is null (None): null means absent, i.e. the default. So a spec.json
    as nvcim records it ("betas": null, "threads_per_cell": null, ...) or one with e.g. "max_chips": null loads. At the
    top level, in [eval] and [resources], and a variant's params; null for a required key stays (its error names it).
    [train] and method parameters are kept as given (their own configs take None where it is meaningful)."""
    out = {k: v for k, v in raw.items() if v is not None or k in REQUIRED_KEYS}
    for table in ("eval", "resources"):
        if isinstance(out.get(table), Mapping):
            out[table] = {k: v for k, v in out[table].items() if v is not None}
    if isinstance(out.get("variants"), list):
        out["variants"] = [{k: x for k, x in v.items() if x is not None or k != "params"} if isinstance(v, Mapping)
                           else v for v in out["variants"]]
    return out


def validate_spec(raw: Mapping, where: str = "<spec>", base_dir=None) -> SweepSpec:
    """`raw` checked and normalized, every default filled; one-line ValueError naming the bad key.
    An optional key given as null counts as absent (its default): `_nulls_dropped`.
    `base_dir`: the directory device model files are relative to (None: the working directory)."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"sweep spec {where} must be a mapping of keys, got {type(raw).__name__}")
    raw = _nulls_dropped(raw)
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"sweep spec {where}: unknown key(s) {unknown}{_guess_hint(unknown, SPEC_KEYS)}: allowed "
                         f"keys are {list(SPEC_KEYS)}")
    for key in ("models", "datasets", "sigmas", "seeds"):
        if key not in raw:
            raise ValueError(f"sweep spec {where}: key {key!r} is missing: it is required")
    spec: dict[str, Any] = {}
    name = raw.get("name", SweepSpec.name)
    if not isinstance(name, str) or not name.strip():
        raise _err(where, "name", name, "a non-empty string")
    spec["name"] = name
    if "description" in raw:
        if not isinstance(raw["description"], str):
            raise _err(where, "description", raw["description"], "a string")
        spec["description"] = raw["description"]
    spec["models"] = _str_list(raw, "models", where, list_models())
    width = raw.get("width", SweepSpec.width)
    if not is_num(width) or width <= 0:
        raise _err(where, "width", width, "a finite number > 0")
    spec["width"] = float(width)
    spec["datasets"] = _str_list(raw, "datasets", where, list(DATASETS), extra=is_npz_name)
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
        searched = METHODS.get(m).search
        if searched == "beta" and searched in params and spec["betas"] is not None:  # other searches: own values
            raise ValueError(f"sweep spec {where}: key 'method_params.{m}.{searched}' conflicts with 'betas': "
                             "give one of them")
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
        allowed = [f for f in FIELDS if f not in SWEEP_SET]
        raise ValueError(f"sweep spec {where}: unknown key(s) {['train.' + k for k in unknown]}"
                         f"{_guess_hint(unknown, allowed, 'train.')}: allowed are "
                         f"{['train.' + f for f in allowed]}{_top_level_hint(unknown)}")
    if isinstance(tr.get("device_config"), Mapping) and "sigma" in tr["device_config"]:  # each cell's σ replaced it
        raise ValueError(f"sweep spec {where}: key 'train.device_config.sigma' is set by the sweep per cell from "
                         "'sigmas': drop it")
    conflicts = device_key_conflicts(tr)
    if conflicts:
        raise ValueError(f"sweep spec {where}: [train]: {conflicts[0]}")
    per_model = tr.get("digital_layers")
    if isinstance(per_model, Mapping):  # [train.digital_layers] MODEL = [patterns]: each model its own digital layers
        stray = sorted(set(per_model) - set(spec["models"]))
        if stray:
            raise ValueError(f"sweep spec {where}: key 'train.digital_layers.{stray[0]}' names no model of the spec "
                             f"({', '.join(spec['models'])}): give the patterns per model name")
        for model, patterns in per_model.items():
            if not (isinstance(patterns, (list, tuple)) and all(isinstance(p, str) for p in patterns)):
                raise ValueError(f"sweep spec {where}: key 'train.digital_layers.{model}'={patterns!r} is invalid: "
                                 "give a list of layer names or patterns, e.g. [\"rnn\"]")
    try:
        probe = TrainConfig.from_dict({**tr, "model": spec["models"][0], "dataset": spec["datasets"][0],
                                       "method": "vanilla", "progress": False,
                                       "digital_layers": digital_layers_of(tr, spec["models"][0])})
    except ValueError as exc:
        raise ValueError(f"sweep spec {where}: [train]: {str(exc).splitlines()[0]}") from None
    spec["train"] = dict(tr)
    if "device_models" in raw:
        spec["device_models"] = _device_models(raw, where, base_dir, spec["sigmas"][0], tr)

    # [eval]
    e = _table_with_defaults(raw, "eval", EVAL_DEFAULTS, where)
    # runs >= 2 as nvcim eval asks (one chip has no spread, no CI); the β search's val_runs may be 1 (a mean only)
    for key, lo in (("runs", 2), ("seed", 0), ("val_runs", 1), ("val_seed", 0), ("batch_size", 1)):
        if not is_int(e[key]) or e[key] < lo:
            raise _err(where, f"eval.{key}", e[key], f"an integer >= {lo}")
    for key in ("runs", "val_runs", "max_chips"):  # as nvcim eval refuses them without --force-runs
        if is_int(e[key]) and e[key] > MAX_RUNS:
            raise _err(where, f"eval.{key}", e[key], f"at most {MAX_RUNS} chips (a typo's extra zeros cost hours)")
    if not isinstance(e["keep_beta_checkpoints"], bool):
        raise _err(where, "eval.keep_beta_checkpoints", e["keep_beta_checkpoints"], "true or false")
    n_cal = e["bn_calibration_images"]
    if not is_int(n_cal) or n_cal < 0 or n_cal == 1:
        raise _err(where, "eval.bn_calibration_images", n_cal, "0 (off) or an integer >= 2")
    if e["adc_calibration"] not in ("evaluated", "train"):
        raise _err(where, "eval.adc_calibration", e["adc_calibration"], "'evaluated' (default) or 'train'")
    _check_target(raw.get("eval") or {}, e, where)
    ts = e["test_sigmas"]
    if isinstance(ts, str):
        if ts not in ("train", "grid"):
            raise _err(where, "eval.test_sigmas", ts, "'train', 'grid' or a list of σ >= 0")
    else:
        e["test_sigmas"] = sorted(_num_list({"eval.test_sigmas": ts}, "eval.test_sigmas", where))
    spec["eval"] = e

    # [resources]
    r = _table_with_defaults(raw, "resources", RESOURCE_DEFAULTS, where)
    threads = r["threads_per_cell"]
    if threads is not None and (not is_int(threads) or not 1 <= threads <= MAX_THREADS):
        raise _err(where, "resources.threads_per_cell", threads, f"an integer from 1 to {MAX_THREADS}")
    if not is_num(r["cpus_per_cell"]) or not 0 < r["cpus_per_cell"] <= MAX_THREADS:
        raise _err(where, "resources.cpus_per_cell", r["cpus_per_cell"], f"a number > 0 and <= {MAX_THREADS}")
    if r["gpus_per_cell"] is None:
        r["gpus_per_cell"] = 1 if probe.device == "cuda" else 0
    if not is_num(r["gpus_per_cell"]) or r["gpus_per_cell"] < 0:
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
    used = set(spec["methods"]) | {v["method"] for v in spec["variants"]}
    idle = sorted(set(spec["method_params"]) - used)
    if idle:  # it would change nothing: a typo, or a method left out of 'methods'
        raise ValueError(f"sweep spec {where}: key 'method_params.{idle[0]}' is for a method no arm uses: add "
                         f"{idle[0]!r} to 'methods' or drop it")

    typed = SweepSpec.from_dict(spec)
    try:
        cells = expand(typed)  # validates every cell's TrainConfig (one-line error naming the cell)
    except ValueError as exc:  # its messages begin "sweep spec:"; name the file
        msg = str(exc)
        raise ValueError(f"sweep spec {where}:{msg.removeprefix('sweep spec:')}" if msg.startswith("sweep spec:")
                         else f"sweep spec {where}: {msg}") from None
    if not cells:
        raise ValueError(f"sweep spec {where}: the grid is empty")
    fits: dict[tuple, tuple] = {}  # (model, data set, method) -> a cell's TrainConfig, every training and test device
    for c in cells:
        train_cfg = c.train_config(c.betas[0] if c.betas else None)
        _, devices = fits.setdefault((c.model, c.dataset, c.method), (train_cfg, {}))
        for device in (train_cfg.device_cfg(), c.test_device()):
            devices.setdefault(repr(device), device)
    problems = {}  # every model builds for every data set's images, suits its methods and runs every device of its
    for train_cfg, devices in fits.values():  # cells, before any data are fetched; all models' problems said at once
        try:
            check_model_fits_data(train_cfg, list(devices.values()))
        except ValueError as exc:
            problems.setdefault(str(exc), None)
    if problems:
        raise ValueError(f"sweep spec {where}: {'; '.join(problems)}")
    if any(c.betas for c in cells) and probe.val_fraction <= 0:
        raise ValueError(f"sweep spec {where}: key 'train.val_fraction'={probe.val_fraction!r} leaves no validation "
                         "split for the β search: use a value in (0, 1)")
    return typed
