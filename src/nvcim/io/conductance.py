"""Conductance maps: the device levels that program a real chip, written from and read back into a checkpoint.

    DIR/
      manifest.json              layer order, names, shapes, M, K, level -> conductance, tiling (below)
      conductances.safetensors   per noisy tensor NAME (its state-dict name, e.g. "features.0.weight"):
                                   levels/NAME  uint8 [M/K, TR, TC, R, C]  target level ḡ_j of every device
                                                (SPEC Eq. 2 slices, j = 0 least significant)
                                   sign/NAME    uint8 [TR, TC, R, C]  0: the weight sits on the positive
                                                crossbar, 1: on the negative one (its devices there hold
                                                the levels; those on the other crossbar stay at level 0)
                                   scale/NAME   [] in the weight's dtype: s = max|W|
                                 digital/KEY: every other state-dict entry (biases, BatchNorm), exact
    A state-dict key naming a tensor already exported under another key (a module registered under two
    names, `self.again = self.block`) is stored once: the manifest's "aliases" maps it to that key.

    export_conductance_map("runs/a", "chip/", tile_rows=128, tile_cols=128)   # nvcim export
    model, config = read_conductance_map("chip/")                             # the quantised model
    import_conductance_map("chip/", "runs/a-from-chip")                       # nvcim import

Crossbar layout: a weight W is the matrix W.reshape(W.shape[0], -1) transposed, rows = its flattened
trailing axes (for Linear and Conv the fan-in: in_channels, kernel positions, in that order, as in
`nvcim.core.adc`), columns = its first axis (output channels; a ConvTranspose's weight is stored
[in_channels, out_channels / groups, k...], so its map's columns are its input channels and its rows its output
channels and kernel positions: the transpose of the crossbar that computes it, to be transposed when programming
one). Untiled, TR = TC = 1 and R × C is the whole
matrix; with tiling, R × C crossbars (TR = ceil(rows / R), TC = ceil(cols / C)), the last ones padded with
level-0 devices of sign 0. W_d = (1 - 2 sign) · s / (2^M - 1) · Σ_j ḡ_j 2^{jK} (`target_weights`, the formula
of `nvcim.quantize`), so the rebuilt weights equal the checkpoint's quantised weights bit for bit.
A level ℓ of a K-bit device stands for the conductance g_min + ℓ / (2^K - 1) · (g_max - g_min) (SPEC §2:
σ_d is relative to the top level); the manifest lists these fractions.

The noisy tensors are those `nvcim eval` varies (every supported layer's weights), with the checkpoint's M and
K. Writing follows the checkpoint rules (nvcim.io.checkpoint): all files go into a temporary directory that
is then renamed into place; only an earlier conductance map holding nothing but its two files is replaced;
any other existing non-empty directory is refused, and so is an output whose directory cannot be created
or written, before the checkpoint is loaded. Every problem is a `ConductanceMapError` (one line).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nvcim.core import device as dm
from nvcim.core.config import DeviceConfig
from nvcim.io import checkpoint
from nvcim.io.files import check_output_path, current_umask, publish_directory

MANIFEST_FILE = "manifest.json"
TENSORS_FILE = "conductances.safetensors"
FORMAT = "nvcim-conductance-map"
FORMAT_VERSION = 1
MAX_DEVICE_BITS = 8  # levels are stored as uint8
# checkpoint config entries the importer rewrites itself (save_checkpoint sets them anew)
_NOT_CARRIED = ("nvcim_version", "model", "plugins", "plugins_sha256", "versions", "git_commit", "created")


class ConductanceMapError(ValueError):
    """A conductance map cannot be written or read; the message names the path, the problem and a fix."""


# ---- layout ----------------------------------------------------------------------------------------
_MAX_PADDING = 64  # a map at most this many times the devices of its layers (tiles larger than layers are padded)


def _tiles(rows: int, cols: int, tile_rows: int | None, tile_cols: int | None) -> tuple[int, int, int, int]:
    """(TR, TC, R, C) for a rows × cols crossbar matrix."""
    r = rows if tile_rows is None else tile_rows
    c = cols if tile_cols is None else tile_cols
    tr = 1 if tile_rows is None else math.ceil(rows / r)
    tc = 1 if tile_cols is None else math.ceil(cols / c)
    return tr, tc, r, c


def _to_crossbars(t: torch.Tensor, lead: int, tr: int, tc: int, r: int, c: int) -> torch.Tensor:
    """[*lead_dims, *shape] -> [*lead_dims, TR, TC, R, C]: transposed matrix view, zero-padded, cut in tiles."""
    lead_shape = t.shape[:lead]
    matrix = t.reshape(*lead_shape, t.shape[lead], -1).transpose(-1, -2)  # [*lead, rows, cols]
    padded = t.new_zeros(*lead_shape, tr * r, tc * c)
    padded[..., :matrix.shape[-2], :matrix.shape[-1]] = matrix
    return padded.reshape(*lead_shape, tr, r, tc, c).transpose(-3, -2).contiguous()


def _from_crossbars(t: torch.Tensor, lead: int, shape: list[int]) -> torch.Tensor:
    """Inverse of `_to_crossbars`: [*lead, TR, TC, R, C] -> [*lead, *shape] (padding dropped)."""
    lead_shape = t.shape[:lead]
    tr, tc, r, c = t.shape[lead:]
    rows = math.prod(shape[1:])
    matrix = t.transpose(-3, -2).reshape(*lead_shape, tr * r, tc * c)[..., :rows, :shape[0]]
    return matrix.transpose(-1, -2).reshape(*lead_shape, *shape)


def _padding(t: torch.Tensor, lead: int, rows: int, cols: int) -> torch.Tensor:
    """The padded cells of a [*lead, TR, TC, R, C] tensor (everything outside rows × cols)."""
    tr, tc, r, c = t.shape[lead:]
    full = t.transpose(-3, -2).reshape(*t.shape[:lead], tr * r, tc * c)
    return torch.cat([full[..., rows:, :].flatten(), full[..., :rows, cols:].flatten()])


# ---- export ------------------------------------------------------------------------------------------
def conductance_tensors(model: nn.Module, cfg: DeviceConfig, *, tile_rows: int | None = None,
                        tile_cols: int | None = None) -> tuple[dict[str, torch.Tensor], list[dict], list[str],
                                                                dict[str, str]]:
    """(tensors, layer entries, digital keys, aliases) of the conductance map of `model` under `cfg`'s M and K:
    the noisy tensors as device levels, sign and scale, every other state-dict entry as it is; aliases: {key:
    the key its tensor is stored under} for the keys that name a tensor stored under another (shared modules)."""
    from nvcim.layers.noise import selected_parameters

    if cfg.device_bits > MAX_DEVICE_BITS:
        raise ConductanceMapError(f"device_bits K={cfg.device_bits} does not fit the map's uint8 levels: "
                                  f"export devices of at most {MAX_DEVICE_BITS} bits")
    for flag, value in (("tile_rows", tile_rows), ("tile_cols", tile_cols)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConductanceMapError(f"{flag}={value!r} is invalid: use an integer >= 1 (e.g. 128) or None")
    state = model.state_dict(keep_vars=True)  # the tensors themselves: a module registered twice shows as one
    tensors: dict[str, torch.Tensor] = {}
    layers = []
    noisy = selected_parameters(model)
    for name, module, attr in noisy:  # before any work: no device level stands for NaN or inf
        w = getattr(module, attr).detach()
        bad = int((~torch.isfinite(w)).sum())
        if bad:
            raise ConductanceMapError(f"weight {name!r} holds {bad} NaN or infinite value{'s' * (bad > 1)} (of "
                                      f"{w.numel()}), which no device level stands for (its scale max|W| is not "
                                      "finite): the checkpoint is damaged or its training diverged; export a "
                                      "checkpoint with finite weights")
    shapes = [(math.prod(getattr(m, a).shape[1:]), getattr(m, a).shape[0]) for _, m, a in noisy]  # (rows, cols)
    padded = sum(tr * r * tc * c for tr, tc, r, c in (_tiles(*rc, tile_rows, tile_cols) for rc in shapes))
    weights = sum(r * c for r, c in shapes)
    if padded > _MAX_PADDING * weights:  # tiles far larger than the layers: mostly zeros
        big = max(max(r for r, _ in shapes), max(c for _, c in shapes))
        raise ConductanceMapError(f"tile_rows={tile_rows}, tile_cols={tile_cols} pad the map to "
                                  f"{padded / weights:.0f}x the model's weights (the largest "
                                  f"layer has {big} rows or columns): use smaller tiles, or None for one tile per "
                                  "layer")
    for name, module, attr in noisy:
        w = getattr(module, attr).detach().to("cpu")
        prepared = dm.prepare(w, cfg.replace(quantize=True))
        levels = dm.slice_levels(prepared.levels, cfg).to(torch.uint8)  # [M/K, *shape]
        negative = (prepared.sign < 0).to(torch.uint8)  # [*shape]
        rows, cols = math.prod(w.shape[1:]), w.shape[0]
        tr, tc, r, c = _tiles(rows, cols, tile_rows, tile_cols)
        tensors[f"levels/{name}"] = _to_crossbars(levels, 1, tr, tc, r, c)
        tensors[f"sign/{name}"] = _to_crossbars(negative, 0, tr, tc, r, c)
        tensors[f"scale/{name}"] = prepared.scale.clone()
        layers.append({"name": name, "module": name.rsplit(".", 1)[0] if "." in name else "",
                       "type": type(module).__name__, "shape": list(w.shape), "dtype": _dtype_name(w.dtype),
                       "crossbar_rows": rows, "crossbar_cols": cols, "tiles": [tr, tc], "tile_shape": [r, c],
                       "devices": cfg.devices_per_weight * w.numel(), "scale": float(prepared.scale)})
    noisy_names = {n for n, _, _ in noisy}
    stored_as = {id(getattr(m, a)): n for n, m, a in reversed(noisy)}  # tensor -> the first key it is stored under
    digital, aliases = [], {}
    for key, value in state.items():
        if key in noisy_names:
            continue
        first = stored_as.setdefault(id(value), key)
        if first != key:  # the same tensor as an earlier key: its levels (or exact copy) are already stored
            aliases[key] = first
        else:
            digital.append(key)
            tensors[f"digital/{key}"] = value.detach().to("cpu", copy=True).contiguous()
    return tensors, layers, digital, aliases


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def manifest(cfg: DeviceConfig, layers: list[dict], digital: list[str], *, tile_rows: int | None,
             tile_cols: int | None, source: dict[str, Any], aliases: dict[str, str] | None = None) -> dict[str, Any]:
    """The manifest.json of a conductance map (see the module docstring and README)."""
    import nvcim

    top = cfg.device_levels
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "nvcim_version": nvcim.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tensors_file": TENSORS_FILE,
        "weight_bits": cfg.weight_bits, "device_bits": cfg.device_bits, "devices_per_weight": cfg.devices_per_weight,
        "level_conductance": [level / top for level in range(top + 1)],
        "conductance": "level l of a device stands for g_min + level_conductance[l] * (g_max - g_min)",
        "weight": "W = (1 - 2 sign) * scale / (2^M - 1) * sum_j levels[j] * 2^(j K)",
        "layout": "levels [M/K, TR, TC, R, C], sign [TR, TC, R, C] uint8: crossbar rows = the weight's flattened "
                  "trailing axes (fan-in), columns = its first axis; padding devices at level 0, sign 0",
        "tiling": {"tile_rows": tile_rows, "tile_cols": tile_cols},
        "layers": layers, "digital": digital, "aliases": dict(aliases or {}), "source": source,
    }


def _replace_problem(path: Path) -> str | None:
    """Why writing a map at `path` would destroy something nvcim did not write as a conductance map, or None."""
    if not path.exists():
        return None
    if not path.is_dir():
        return "a file of that name exists: choose a directory path"
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return None
    if MANIFEST_FILE not in entries or _read_manifest_or_none(path) is None:
        return "the directory exists and is not a conductance map: refusing to replace it, choose another path"
    others = [e for e in entries if e not in (MANIFEST_FILE, TENSORS_FILE)]
    if others:
        return (f"the conductance map directory also holds {others[:3]}, which replacing it would delete: move them "
                "out or choose another path")
    return None


def _read_manifest_or_none(path: Path) -> dict | None:
    try:
        data = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def check_map_output(out, source=None) -> Path:
    """Raise ConductanceMapError unless a conductance map can be written at `out` (before any work): not an
    existing directory that is not a map, not inside the checkpoint `source` it is exported from."""
    out = Path(out)
    problem = _replace_problem(out)
    if problem:
        raise ConductanceMapError(f"cannot write conductance map {out}: {problem}")
    try:  # the map is written next to `out` and renamed into place: its directory must be creatable and writable
        if out.exists() or out.is_symlink():
            check_output_path(out.parent, f"cannot write conductance map {out}: its directory", is_dir=True)
        else:
            check_output_path(out, "cannot write conductance map", is_dir=True)
    except ValueError as exc:
        raise ConductanceMapError(str(exc)) from None
    if source is not None:
        src = Path(source).resolve()
        if out.resolve() == src or src in out.resolve().parents:
            raise ConductanceMapError(f"cannot write conductance map {out}: it is inside the checkpoint {source}: "
                                      "choose a path outside it")
    return out


def write_conductance_map(out, model: nn.Module, cfg: DeviceConfig, *, tile_rows: int | None = None,
                          tile_cols: int | None = None, source: dict[str, Any] | None = None) -> Path:
    """Write the conductance map of `model` (its weights quantised with cfg's M and K) to directory `out`,
    atomically; `source` (e.g. {"checkpoint": path, "config": {...}}) is stored in the manifest."""
    from safetensors.torch import save_file

    out = check_map_output(out)
    tensors, layers, digital, aliases = conductance_tensors(model, cfg, tile_rows=tile_rows, tile_cols=tile_cols)
    from nvcim.layers.noise import digital_layers

    source = dict(source or {})
    kept = digital_layers(model)  # layers kept digital (nvcim.keep_digital_) are read back digital
    if kept and "digital_layer_names" not in (source.get("config") or {}):
        source["config"] = {**(source.get("config") or {}), "digital_layer_names": kept}
    text = json.dumps(manifest(cfg, layers, digital, tile_rows=tile_rows, tile_cols=tile_cols,
                               source=source, aliases=aliases), indent=2, allow_nan=False) + "\n"
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        save_file(tensors, str(tmp / TENSORS_FILE), metadata={"format": FORMAT})
        (tmp / MANIFEST_FILE).write_text(text, encoding="utf-8")
        umask = current_umask()
        for file in (TENSORS_FILE, MANIFEST_FILE):
            (tmp / file).chmod(0o666 & ~umask)
        tmp.chmod(0o777 & ~umask)
        publish_directory(tmp, out)
    except OSError as exc:
        raise ConductanceMapError(f"cannot write conductance map {out}: {exc}: check the directory is writable") from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_conductance_map(ckpt, out, *, tile_rows: int | None = None, tile_cols: int | None = None) -> Path:
    """`nvcim export`: the conductance map of checkpoint `ckpt` (its device's M and K) in directory `out`."""
    check_map_output(out, ckpt)
    model, config = checkpoint.load_checkpoint(ckpt)
    device = config.get("device") or {}
    cfg = DeviceConfig.from_dict(device) if device else DeviceConfig()
    if not cfg.quantize:
        warnings.warn(f"checkpoint {ckpt} was trained without quantization (quantize=false): the map holds its "
                      f"weights quantised to M={cfg.weight_bits} bits, as a chip stores them", UserWarning, stacklevel=2)
    return write_conductance_map(out, model, cfg, tile_rows=tile_rows, tile_cols=tile_cols,
                                 source={"checkpoint": str(ckpt), "config": config})


# ---- import ------------------------------------------------------------------------------------------
def read_manifest(path) -> dict[str, Any]:
    """The parsed manifest.json of conductance map `path`, its format checked."""
    path = Path(path)
    if not path.is_dir():
        raise ConductanceMapError(f"conductance map {path} {'is not a directory' if path.exists() else 'does not exist'}: "
                                  "pass the directory written by nvcim export")
    try:
        data = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConductanceMapError(f"conductance map {path} has no {MANIFEST_FILE}: pass the directory written by "
                                  "nvcim export") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConductanceMapError(f"conductance map {path}: {MANIFEST_FILE} is not valid JSON "
                                  f"({str(exc).splitlines()[0]}): the file is corrupted") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConductanceMapError(f"conductance map {path}: {MANIFEST_FILE} is not an nvcim conductance map manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise ConductanceMapError(f"conductance map {path}: format version {data.get('format_version')!r} is not "
                                  f"{FORMAT_VERSION}: read it with the nvcim version that wrote it")
    for key, kind in (("layers", list), ("digital", list), ("source", dict), ("weight_bits", int), ("device_bits", int)):
        if not isinstance(data.get(key), kind):
            raise ConductanceMapError(f"conductance map {path}: {MANIFEST_FILE} has no valid {key!r}: fix the manifest")
    return data


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path / TENSORS_FILE), device="cpu")
    except FileNotFoundError:
        raise ConductanceMapError(f"conductance map {path} has no {TENSORS_FILE}: the map is incomplete, export it "
                                  "again") from None
    except Exception as exc:  # SafetensorError, OSError: an unreadable file
        raise ConductanceMapError(f"conductance map {path}: {TENSORS_FILE} is unreadable "
                                  f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): the file is "
                                  "truncated or corrupted") from None


def _layer_weights(path: Path, entry: Any, tensors: dict[str, torch.Tensor], cfg: DeviceConfig) -> tuple[str, torch.Tensor]:
    """(name, W_d) of one manifest layer entry, every tensor checked against it."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not isinstance(entry.get("shape"), list):
        raise ConductanceMapError(f"conductance map {path}: layer entry {entry!r:.80} has no name and shape: fix the manifest")
    name, shape = entry["name"], entry["shape"]
    where = f"conductance map {path}: layer {name!r}"
    if not shape or not all(type(size) is int and size >= 1 for size in shape):
        raise ConductanceMapError(f"{where}: shape {shape!r:.80} is not a list of sizes (integers >= 1, e.g. "
                                  "[64, 3, 3, 3]): fix the manifest")
    keys = {kind: f"{kind}/{name}" for kind in ("levels", "sign", "scale")}
    missing = [k for k in keys.values() if k not in tensors]
    if missing:
        raise ConductanceMapError(f"{where}: {TENSORS_FILE} has no {missing[0]!r}: the files come from different exports")
    levels, sign, scale = (tensors[keys[k]] for k in ("levels", "sign", "scale"))
    rows, cols = math.prod(shape[1:]), shape[0]
    lead = (cfg.devices_per_weight,)
    if levels.dtype != torch.uint8 or sign.dtype != torch.uint8 or levels.dim() != 5 or sign.dim() != 4 \
            or tuple(levels.shape[:1]) != lead or levels.shape[1:] != sign.shape \
            or sign.shape[0] * sign.shape[2] < rows or sign.shape[1] * sign.shape[3] < cols:
        raise ConductanceMapError(f"{where}: levels {tuple(levels.shape)} {levels.dtype} / sign {tuple(sign.shape)} "
                                  f"{sign.dtype} do not fit shape {shape} with M/K={cfg.devices_per_weight} uint8 devices: "
                                  "the files come from different exports")
    if not scale.is_floating_point() or scale.dim() != 0 or not math.isfinite(float(scale)) or float(scale) < 0:
        raise ConductanceMapError(f"{where}: scale {scale!r:.60} is not a finite number >= 0: fix the map")
    if (levels > cfg.device_levels).any() or (sign > 1).any():
        raise ConductanceMapError(f"{where}: a level above {cfg.device_levels} (K={cfg.device_bits} bits) or a sign other "
                                  "than 0 / 1: fix the map")
    if _padding(levels, 1, rows, cols).any() or _padding(sign, 0, rows, cols).any():
        raise ConductanceMapError(f"{where}: padding devices of the last tiles are not at level 0 with sign 0: fix the map")
    q = dm.combine_levels(_from_crossbars(levels, 1, shape).to(torch.int64), cfg).to(scale.dtype)  # [*shape]
    negative = _from_crossbars(sign, 0, shape).bool()
    signs = torch.where(negative, -1.0, 1.0).to(scale.dtype)
    return name, dm.target_weights(q, signs, scale, cfg)


def _fill_aliases(model: nn.Module, state: dict[str, torch.Tensor], noisy: set[str]) -> None:
    """Give every key of `model` that names the same tensor as another (a module registered under two names) the
    value stored for that tensor: its rebuilt levels when one of its keys is a noisy layer (an exact copy a map
    written before nvcim stored aliases once never wins over them), else its one digital entry."""
    keys_of: dict[int, list[str]] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        keys_of.setdefault(id(value), []).append(key)
    for keys in keys_of.values():
        stored = [k for k in keys if k in noisy] or [k for k in keys if k in state]
        if len(keys) > 1 and stored:
            for key in keys:
                if key not in noisy:
                    state[key] = state[stored[0]]


def _misfit(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """The first way the tensors `state` do not fit `model` (a key missing, extra, or of another shape), or None."""
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state:
            return f"the model's {key!r} is not in the map"
        if tuple(state[key].shape) != tuple(value.shape):
            return f"{key!r} is {list(state[key].shape)} in the map, {list(value.shape)} in the model"
    extra = [key for key in state if key not in expected]
    return f"the map's {extra[0]!r} is not in the model" if extra else None


def read_conductance_map(path, model: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """(model, config): the model of conductance map `path` with its quantised weights rebuilt from the device
    levels (bit for bit those of `nvcim.quantize`) and its digital tensors; config: the source checkpoint's.
    `model`: a module of the exported architecture to load them into (a map written by `write_conductance_map`
    from a model of your own, which nvcim cannot rebuild), else built from the manifest's model spec."""
    from nvcim.models import create_model
    from nvcim.plugins import missing_hint

    path = Path(path)
    data = read_manifest(path)
    config = data["source"].get("config")
    config = config if isinstance(config, dict) else {}
    if model is None and not isinstance(config.get("model"), dict):
        raise ConductanceMapError(f"conductance map {path}: the manifest names no model spec nvcim can build (written "
                                  "from a model of your own): pass model= a module of that architecture")
    try:
        cfg = DeviceConfig(weight_bits=data["weight_bits"], device_bits=data["device_bits"])
    except (ValueError, TypeError) as exc:
        raise ConductanceMapError(f"conductance map {path}: M={data['weight_bits']}, K={data['device_bits']} are "
                                  f"invalid ({exc}): fix the manifest") from None
    tensors = _read_tensors(path)
    noisy = [_layer_weights(path, e, tensors, cfg) for e in data["layers"]]
    state = dict(noisy)
    for key in data["digital"]:
        if f"digital/{key}" not in tensors:
            raise ConductanceMapError(f"conductance map {path}: {TENSORS_FILE} has no 'digital/{key}': the files come "
                                      "from different exports")
        state[key] = tensors[f"digital/{key}"]
    spec = dict(config.get("model") or {"name": type(model).__name__})
    try:
        model = create_model(**spec) if model is None else model
    except (ValueError, TypeError) as exc:
        raise ConductanceMapError(f"conductance map {path}: model spec {spec} cannot be built "
                                  f"({exc}){missing_hint(config.get('plugins')) or ': fix the manifest'}") from None
    _fill_aliases(model, state, {name for name, _ in noisy})
    float_dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(float_dtypes) == 1:
        model = model.to(float_dtypes.pop())
    misfit = _misfit(model, state)
    try:
        if misfit is None:
            model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        misfit = lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__
    if misfit is not None:
        raise ConductanceMapError(f"conductance map {path}: its tensors do not fit model {spec['name']} "
                                  f"({misfit}): the files come from different exports")
    try:  # the source kept them digital (exported exact): so does the model read back
        checkpoint.keep_recorded_digital_(model, config)
    except (ValueError, TypeError) as exc:
        raise ConductanceMapError(f"conductance map {path}: {exc}") from None
    return model, config


def import_conductance_map(path, out) -> Path:
    """`nvcim import`: an nvcim checkpoint at `out` holding the quantised model of conductance map `path`."""
    path, out = Path(path), Path(out)
    problem = checkpoint.replaceable_problem(out)
    if problem:
        raise ConductanceMapError(f"cannot write checkpoint {out}: {problem}")
    if out.resolve() == path.resolve() or path.resolve() in out.resolve().parents:
        raise ConductanceMapError(f"cannot write checkpoint {out}: it is inside the conductance map {path}: choose a "
                                  "path outside it")
    model, config = read_conductance_map(path)  # a map of a model nvcim can build: a checkpoint names its spec
    meta = {k: v for k, v in config.items() if k not in _NOT_CARRIED}
    meta["imported_from"] = {"conductance_map": str(path),
                             "source_checkpoint": read_manifest(path)["source"].get("checkpoint")}
    return checkpoint.save_checkpoint(out, model, config["model"], **meta)
