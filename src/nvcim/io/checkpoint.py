"""Checkpoints: a directory with the plain backbone's weights and a human-readable config.

    ckpt/
      model.safetensors   every state_dict entry of the backbone (weights, BN running stats,
                          num_batches_tracked); noise controllers are not part of it
      config.json         {"nvcim_version", "model": {name, num_classes, in_channels, width,
                          image_size, ...}, "data", "method", "device", "train", "seed",
                          "metrics", "versions", "git_commit", "created", ...; with layers kept
                          digital: "digital_layers" (the patterns asked for) and
                          "digital_layer_names" (the layers they selected); "weights_sha256"
                          (of model.safetensors, which stores no checksum: checked on load)}

    save_checkpoint("runs/a", model, {"name": "vgg8", "num_classes": 10, "in_channels": 1},
                    method="ovf", device=cfg, seed=0, metrics={"mc_mean": 91.2})
    model, config = load_checkpoint("runs/a")

Saving is atomic: everything is written into a temporary directory next to the target, which is
then renamed into place; an existing checkpoint is renamed aside first and deleted only after the
new one is in place (and restored if that rename fails). Only a real nvcim checkpoint is ever replaced
(`is_checkpoint_dir`: its config.json is nvcim's and its weights file is there, nothing else is in
it); any other non-empty directory is refused. The files get the usual permissions (0644 / 0755 under
the umask), not the private ones of temporary files. Loading never executes code: safetensors and
JSON only. Every problem is a `CheckpointError` with a one-line message (path, problem, hint).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fnmatch
import functools
import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from nvcim.io.files import current_umask, file_sha256, publish_directory
from nvcim.plugins import fingerprint as plugin_fingerprint
from nvcim.plugins import loaded as loaded_plugins
from nvcim.plugins import missing_hint

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
META_KEYS = ("data", "method", "device", "train", "seed", "metrics")


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read; the message names the path, the problem and a hint."""


# ---- helpers -------------------------------------------------------------------------------------
def _jsonable(value: Any, where: str) -> Any:
    """Convert meta values to plain JSON types (dataclasses, DeviceConfig, paths, numpy/torch scalars)."""
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return _jsonable(value.to_dict(), where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value), where)
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # strict JSON has no NaN/inf
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        seq = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(seq)]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _jsonable(value.item(), where)
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalar / 0-d array
        try:
            return _jsonable(value.item(), where)
        except (TypeError, ValueError, RuntimeError):  # several elements (numpy: ValueError, torch: RuntimeError)
            pass
    if isinstance(value, (torch.device, torch.dtype)):
        return str(value)
    raise CheckpointError(
        f"checkpoint metadata {where} of type {type(value).__name__} is not JSON serializable: "
        "pass numbers, strings, lists or dicts"
    )


@functools.lru_cache(maxsize=None)
def _git_commit(start: str) -> str | None:
    for directory in (start, os.getcwd()):
        try:
            out = subprocess.run(
                ["git", "-C", directory, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return None


def git_commit() -> str | None:
    """`git rev-parse HEAD` of the repository holding the nvcim package (else the cwd), or None."""
    return _git_commit(str(Path(__file__).resolve().parent))


def _versions() -> dict:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import safetensors

        versions["safetensors"] = safetensors.__version__
    except Exception:  # pragma: no cover - safetensors is a dependency
        pass
    try:
        import numpy

        versions["numpy"] = numpy.__version__
    except Exception:  # pragma: no cover
        pass
    return versions


def _model_spec(model: nn.Module, model_spec: Mapping | None, path: Path) -> dict:
    """Complete the spec with the builder's defaults (create_model's nvcim_spec) and check it builds this
    model's state dict."""
    from nvcim.models import create_model

    if model_spec is None:
        model_spec = getattr(model, "nvcim_spec", None)
        if model_spec is None:
            raise CheckpointError(
                f"cannot save checkpoint {path}: no model_spec given and the model has no nvcim_spec: "
                "pass model_spec={'name': ..., 'num_classes': ..., 'in_channels': ...}"
            )
    if not isinstance(model_spec, Mapping) or "name" not in model_spec:
        raise CheckpointError(
            f"cannot save checkpoint {path}: model_spec must be a dict with a 'name' (a registered model), "
            f"got {model_spec!r}"
        )
    spec = _jsonable(dict(model_spec), "model")
    try:
        with torch.device("meta"):  # shapes only: no memory, no RNG use
            reference = create_model(**spec)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot save checkpoint {path}: model spec {spec} is invalid: {exc}") from None
    spec = _jsonable(reference.nvcim_spec, "model")  # the builder's defaults made explicit
    problem = _mismatch(reference.state_dict(), model.state_dict())
    if problem:
        raise CheckpointError(
            f"cannot save checkpoint {path}: the model does not match model spec {spec} ({problem}): "
            "pass the spec the model was created with"
        )
    return spec


def _mismatch(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]) -> str | None:
    """A short description of how two state dicts differ in keys or shapes, or None."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    parts = []
    if missing:
        parts.append(f"missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''} ({len(missing)} in all)")
    if unexpected:
        parts.append(
            f"unexpected keys {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''} ({len(unexpected)} in all)"
        )
    shapes = [
        f"{k}: {tuple(got[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in got and isinstance(got[k], torch.Tensor) and tuple(got[k].shape) != tuple(expected[k].shape)
    ]
    if shapes:
        parts.append(f"shape mismatch {shapes[:2]}{' ...' if len(shapes) > 2 else ''} ({len(shapes)} in all)")
    return "; ".join(parts) or None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


# The config entries that loading and `nvcim eval` read: section -> (field, test, what it must be,
# None allowed). "model" is required; "data" and "device" may be null. The device entry must then
# also build a DeviceConfig (which checks values and the remaining fields).
_FIELD_TYPES = {
    "model": (("name", _is_str, "a model name", False), ("num_classes", _is_int, "an integer", False),
              ("in_channels", _is_int, "an integer", False), ("image_size", _is_int, "an integer", False),
              ("width", _is_number, "a number", False)),
    "data": (("name", _is_str, "a data set name", True), ("root", _is_str, "a directory path", True),
             ("val_fraction", _is_number, "a number", False), ("seed", _is_int, "an integer", False),
             ("limit", _is_int, "an integer", True)),
    "device": (("variation", _is_str, "a variation name", False),
               ("variation_options", lambda v: isinstance(v, Mapping), "a mapping of options", False)),
}


def _config_problem(config: Mapping) -> str | None:
    """What is wrong with the types of a config's model, data and device entries (one line), or None."""
    from nvcim.core.config import DeviceConfig

    for section, fields in _FIELD_TYPES.items():
        entry = config.get(section)
        if entry is None and section != "model":
            continue
        if not isinstance(entry, Mapping):
            return f"{section}={entry!r} is not a mapping of fields"
        for key, ok, what, nullable in fields:
            if key in entry and not (ok(entry[key]) or (nullable and entry[key] is None)):
                return f"{section}.{key}={entry[key]!r} is not {what}{' or null' if nullable else ''}"
    for key in ("digital_layers", "digital_layer_names"):
        digital = config.get(key)
        if digital is not None and not (isinstance(digital, list) and all(isinstance(p, str) for p in digital)):
            return f"{key}={digital!r} is not a list of layer names or patterns"
    if config.get("device") is not None:
        try:
            DeviceConfig.from_dict(config["device"])
        except (ValueError, TypeError) as exc:
            return f"device is invalid ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    return None


def is_checkpoint_dir(path) -> bool:
    """True when `path` is a directory holding an nvcim checkpoint: its config.json parses as nvcim's
    (an "nvcim_version" and a "model" spec with a "name") and its weights file is there."""
    path = Path(path)
    if not (path / WEIGHTS_FILE).is_file():
        return False
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return (isinstance(config, dict) and "nvcim_version" in config and isinstance(config.get("model"), dict)
            and "name" in config["model"])


def replaceable_problem(path) -> str | None:
    """Why saving a checkpoint at `path` would destroy something that is not an nvcim checkpoint (None: it
    would not: `path` is absent, an empty directory, or a checkpoint holding nothing but its two files)."""
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_dir():
        return "a file of that name exists: choose a directory path"
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return None
    if not is_checkpoint_dir(path):
        return ("the directory exists and is not a checkpoint (no nvcim config.json and model.safetensors): "
                "refusing to replace it, choose another path")
    others = [e for e in entries if e not in (CONFIG_FILE, WEIGHTS_FILE)]
    if others:
        return (f"the checkpoint directory also holds {others[:3]}{' ...' if len(others) > 3 else ''}, which "
                "replacing it would delete: move them out or choose another path")
    return None


# ---- save ----------------------------------------------------------------------------------------
def save_checkpoint(path, model: nn.Module, model_spec: Mapping | None = None, **meta) -> Path:
    """Write `model` (plain state dict, noise never included) and its config to directory `path`.

    model_spec: create_model arguments {"name", "num_classes", "in_channels", "width", "image_size",
    ...}; missing fields get the model builder's defaults (stored explicitly); None uses
    `model.nvcim_spec`. It must rebuild exactly this model's state dict (checked at save time, on the
    meta device). The model, device and data entries must have the types `load_checkpoint` accepts.
    meta: stored in config.json as given (data, method, device, train, seed, metrics, or anything
    else JSON-able; a DeviceConfig or dataclass becomes a dict). Returns the checkpoint path.
    """
    from safetensors.torch import save_file

    import nvcim

    path = Path(path)
    problem = replaceable_problem(path)
    if problem:
        raise CheckpointError(f"cannot save checkpoint {path}: {problem}")
    spec = _model_spec(model, model_spec, path)

    config: dict[str, Any] = {"nvcim_version": nvcim.__version__, "model": spec}
    if loaded_plugins():
        config["plugins"] = loaded_plugins()  # what `nvcim eval` must import to rebuild the model
        config["plugins_sha256"] = plugin_fingerprint()  # their code: a report tells models of other versions apart
    config.update({k: None for k in META_KEYS})
    config.update({"versions": _versions(), "git_commit": git_commit(),
                   "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    for key, value in meta.items():
        if key in ("nvcim_version", "model"):
            raise CheckpointError(f"cannot save checkpoint {path}: metadata key {key!r} is reserved: rename it")
        config[key] = _jsonable(value, key)
    if "digital_layer_names" not in meta:  # layers kept digital (nvcim.keep_digital_) stay digital when loaded
        from nvcim.layers.noise import digital_layers

        kept = digital_layers(model)
        if kept:
            config["digital_layer_names"] = kept
    problem = _config_problem(config)
    if problem:
        raise CheckpointError(f"cannot save checkpoint {path}: {problem}: it could not be loaded, pass valid metadata")
    text = json.dumps(config, indent=2, allow_nan=False) + "\n"

    # contiguous CPU copies: safetensors refuses non-contiguous tensors and shared storage
    tensors = {}
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"cannot save checkpoint {path}: state_dict entry {key!r} is not a tensor: "
                "only tensor state is supported"
            )
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        # the weights' digest (safetensors stores no checksum: a flipped bit would load as a wrong weight)
        text = json.dumps({**config, "weights_sha256": file_sha256(tmp / WEIGHTS_FILE)}, indent=2, allow_nan=False) + "\n"
        with open(tmp / CONFIG_FILE, "w", encoding="utf-8") as f:
            f.write(text)
        umask = current_umask()  # mkdtemp's 0700 (and safetensors' 0600) are too private for results
        for file in (WEIGHTS_FILE, CONFIG_FILE):
            os.chmod(tmp / file, 0o666 & ~umask)
        os.chmod(tmp, 0o777 & ~umask)
        publish_directory(tmp, path)  # fsynced, swapped in atomically; a previous checkpoint is put back on failure
    except OSError as exc:
        raise CheckpointError(f"cannot save checkpoint {path}: {exc}: check the directory is writable") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


# ---- load ----------------------------------------------------------------------------------------
def read_checkpoint_config(path) -> dict:
    """The parsed config.json of checkpoint `path` (no weights are read)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a directory: pass the checkpoint directory")
    file = path / CONFIG_FILE
    if not file.is_file():
        if not (path / WEIGHTS_FILE).is_file():  # neither file: another directory, not a damaged checkpoint
            raise CheckpointError(f"{path} is not an nvcim checkpoint (no {CONFIG_FILE} or {WEIGHTS_FILE}): give a "
                                  "directory written by nvcim train (--out) or nvcim import")
        raise CheckpointError(f"checkpoint {path} has no {CONFIG_FILE}: the checkpoint is incomplete, save it again")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint {path}: {CONFIG_FILE} is not valid JSON ({msg}): the file is corrupted") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or "name" not in config["model"]:
        raise CheckpointError(
            f"checkpoint {path}: {CONFIG_FILE} has no 'model' spec with a 'name': not an nvcim checkpoint"
        )
    problem = _config_problem(config)
    if problem:
        hint = missing_hint(config.get("plugins"))  # a plugin's variation kind, say, is unknown without it
        raise CheckpointError(f"checkpoint {path}: {CONFIG_FILE}: {problem}"
                              + (hint if hint else ": fix config.json"))
    return config


def read_checkpoint_weights(path) -> dict[str, torch.Tensor]:
    """The tensors of `path/model.safetensors`, on CPU (never executes code)."""
    from safetensors.torch import load_file

    path = Path(path)
    file = path / WEIGHTS_FILE
    if not file.is_file():
        raise CheckpointError(f"checkpoint {path} has no {WEIGHTS_FILE}: the checkpoint is incomplete, save it again")

    try:
        return load_file(str(file), device="cpu")
    except Exception as exc:  # SafetensorError, OSError, ...: all mean an unreadable file
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path}: {WEIGHTS_FILE} is unreadable ({msg}): the file is truncated or corrupted"
        ) from None


def _plugins_edited(config: Mapping) -> str | None:
    """"PLUGINS, sha256 RECORDED… now NOW…" when the plugins a checkpoint was saved with are loaded now from other
    source code than it records (plugins_sha256), else None (no plugins, not all loaded: missing_hint says so)."""
    recorded, digest = config.get("plugins"), config.get("plugins_sha256")
    if not isinstance(recorded, list) or not isinstance(digest, str) or missing_hint(recorded):
        return None
    now = plugin_fingerprint(recorded)
    if now is None or now == digest:
        return None
    return f"{', '.join(map(str, recorded))}: sha256 {digest[:12]}… when saved, {now[:12]}… now"


def load_checkpoint(path, map_location="cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from config.json via create_model and load its weights (strict).

    Returns (model, config); the model is on `map_location`, with the layers the config records as digital kept
    digital (`nvcim.keep_digital_`), in train mode like a fresh model
    (call .eval() for inference), and keeps the saved floating dtype (float16 / bfloat16 included;
    `nvcim eval` evaluates such a model in float32). Floating-point weights stored as integers are
    loaded as floats with a warning naming them (nvcim never writes them: the file was made elsewhere).
    """
    from nvcim.models import create_model

    path = Path(path)
    config = read_checkpoint_config(path)
    state = read_checkpoint_weights(path)
    spec = dict(config["model"])
    try:
        with torch.device("meta"):  # shapes first: a spec that does not fit the weights allocates nothing
            expected = create_model(**spec).state_dict()
    except (ValueError, TypeError) as exc:
        hint = missing_hint(config.get("plugins"))
        if not hint and "unknown model" in str(exc):  # registered by a plain import when it was saved
            hint = ("; a model of your own: pass --plugin FILE.py (or set NVCIM_PLUGINS; in Python, load it with "
                    "nvcim.plugins.load_plugin so that checkpoints name it)")
        fix = hint if hint else ": fix config.json"
        raise CheckpointError(f"checkpoint {path}: model spec {spec} cannot be built ({exc}){fix}") from None
    edited = _plugins_edited(config)
    problem = _mismatch(expected, state)
    if problem:
        raise CheckpointError(
            f"checkpoint {path}: weights do not match model spec {spec} ({problem}): " + (
                f"the plugins' code that builds it changed since it was saved ({edited}): load the version it was "
                "trained with" if edited else "config.json and model.safetensors come from different models")
        )
    hint = missing_hint(config.get("plugins"))
    if hint:  # it builds without them: by nvcim's own code of that name, or another copy's (a plugin moved or copied)
        warnings.warn(f"checkpoint {path} builds, but its model, method or variation may now come from other code than "
                      f"it was trained with{hint}", RuntimeWarning, stacklevel=2)
    digest = config.get("weights_sha256")  # (None: saved before nvcim recorded it, or written elsewhere)
    if isinstance(digest, str) and file_sha256(path / WEIGHTS_FILE) != digest:  # a file that loads, with other bytes
        raise CheckpointError(f"checkpoint {path}: {WEIGHTS_FILE} is not the file saved with its {CONFIG_FILE} "
                              "(sha256 differs: damaged, e.g. a flipped bit, or replaced): use a good copy or train again (edited "
                              "on purpose? remove weights_sha256 from config.json)")
    if edited:
        warnings.warn(f"checkpoint {path} was saved under other code of its plugin(s) ({edited}): the model built now "
                      "may compute otherwise than the one trained (results may differ); load the version it was "
                      "trained with, or retrain", RuntimeWarning, stacklevel=2)
    model = create_model(**spec)
    as_ints = [k for k, v in state.items() if not v.is_floating_point() and expected[k].is_floating_point()]
    if as_ints:
        warnings.warn(f"checkpoint {path}: {len(as_ints)} floating-point tensor(s) are stored as integers in "
                      f"{WEIGHTS_FILE} (e.g. {as_ints[0]!r}, {state[as_ints[0]].dtype}); loaded as floats: check how "
                      "the file was made (quantized levels without their scale give meaningless results)",
                      RuntimeWarning, stacklevel=2)
    float_dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(float_dtypes) == 1:
        model = model.to(float_dtypes.pop())
    try:
        model.load_state_dict(state, strict=True)
        model = model.to(map_location)
    except (RuntimeError, TypeError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint {path}: cannot load weights ({msg}): check map_location and the files") from None
    try:
        keep_recorded_digital_(model, config)  # trained with those layers digital: every device model leaves them exact
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    return model, config


def keep_recorded_digital_(model: nn.Module, config: Mapping) -> None:
    """Keep the layers a checkpoint's config records as digital digital (`nvcim.keep_digital_`): by their names
    ("digital_layer_names", written since 2026-12-03), else by its "digital_layers" patterns as nvcim matched them
    when it wrote no names (a glob matched a layer's own name only, not the layers inside a matched one). A
    ValueError (one line) when they name no layer of the model."""
    from nvcim.layers.noise import SelectionError, keep_digital_, supported_layers

    names, patterns = config.get("digital_layer_names"), config.get("digital_layers") or []
    if names is None and patterns:
        names = [n for n, _ in supported_layers(model)
                 if any(fnmatch.fnmatchcase(n, p) if any(c in p for c in "*?[") else n == p or n.startswith(p + ".")
                        for p in patterns)]
    if names:
        try:
            keep_digital_(model, names, exact=True)
        except SelectionError as exc:
            raise ValueError(f"digital_layers: {exc}") from None
