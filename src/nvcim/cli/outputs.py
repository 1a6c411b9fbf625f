"""Where `nvcim eval` writes, checked before any work (shared by the single evaluation and the device-model matrix).

    inputs = eval_inputs(args, ckpts)        # [(what, path)]: checkpoints, device-model, plugin and npz files
    check_outputs([("--out", out), ("--csv", csv), ("the heat-map PNG", png)], inputs)

Rules: every output path of one command is writable (`nvcim.io.files.check_output_path`), distinct from the
others (symbolic and hard links included), and none is an input being read: not a checkpoint directory nor
anything in it, not a device-model file, a plugin file or an npz data set. Each refusal is a ValueError of one
line naming the flag, the file and the fix. An existing file is replaced only when nvcim wrote it: an --out
that is an nvcim JSON record ("kind" and "nvcim_version"), a --csv whose header starts as one of nvcim's CSV
files does (`nvcim_wrote`), the matrix's heat-map PNG (`nvcim.report.matrix.is_matrix_png`); anything else
(a mistyped `--out model.py`) is refused, never overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence


def resolved(path: Path) -> Path:
    """The path with '~', '..' and symbolic links resolved; a loop of links is a one-line ValueError (Python 3.11's
    resolve raises RuntimeError there)."""
    try:
        return Path(path).expanduser().resolve()
    except RuntimeError as exc:
        raise ValueError(f"{path}: {exc}: fix the symbolic links or choose another path") from None


def same_file(a: Path, b: Path) -> bool:
    """The same file: equal once symbolic links and '..' are resolved, or hard links of one file."""
    a, b = Path(a), Path(b)
    if resolved(a) == resolved(b):
        return True
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def _collides(out: Path, inp: Path) -> bool:
    """Whether writing the file `out` would replace the input `inp` (a file, or a directory and all in it)."""
    if same_file(out, inp):
        return True
    if inp.is_dir():
        if resolved(inp) in resolved(out).parents:
            return True
        return any(same_file(out, f) for f in inp.iterdir() if f.is_file())  # a hard link of one of its files
    return False


def _data_name(ckpt: Path) -> str | None:
    """The data set name a checkpoint records (None when its config cannot be read: loading reports that)."""
    try:
        data = json.loads((ckpt / "config.json").read_text(encoding="utf-8")).get("data") or {}
        return data.get("name") if isinstance(data, dict) else None
    except (OSError, ValueError, AttributeError):
        return None


def _data_file(ckpt: Path) -> str | None:
    """The absolute path of the npz: file a checkpoint records (data.file.path), else None."""
    try:
        data = json.loads((Path(ckpt) / "config.json").read_text(encoding="utf-8")).get("data") or {}
        file = data.get("file") if isinstance(data, dict) else None
        return str(file["path"]) if isinstance(file, dict) and isinstance(file.get("path"), str) else None
    except (OSError, ValueError, AttributeError):
        return None


def eval_inputs(args, ckpts: Sequence[Path]) -> list[tuple[str, Path]]:
    """(what, path) of every file or directory `nvcim eval` reads that an output could destroy."""
    from nvcim.data import is_npz_name
    from nvcim.data.npz import npz_path
    from nvcim.core.config import PRESET_NAMES
    from nvcim.io.device_models import NAMED
    from nvcim.plugins import loaded

    inputs: list[tuple[str, Path]] = [("the checkpoint", Path(c)) for c in ckpts]
    specs = [args.device_model or "", *(args.device_models or "").split(",")]
    for spec in (s.strip() for s in specs):
        if spec and spec not in NAMED and spec not in PRESET_NAMES and Path(spec).expanduser().is_file():
            inputs.append(("the device-model file", Path(spec).expanduser()))
    inputs += [("the plugin file", Path(p)) for p in loaded() if Path(p).is_file()]
    names = [args.dataset] if args.dataset else [_data_name(Path(c)) for c in ckpts]
    if not args.dataset:  # the file a checkpoint was trained on, by its recorded path (read when the name is relative)
        names += [f"npz:{p}" for p in map(_data_file, ckpts) if p]
    for name in names:
        if is_npz_name(name):
            try:
                inputs.append(("the data-set file", npz_path(name)))
            except ValueError:
                pass  # no file named: loading reports it
    return inputs


# the first columns of every CSV nvcim eval writes: one Monte Carlo row per σ (nvcim.evaluate.write_csv), a
# write-verify point (nvcim.writeverify.write_points_csv), a device-model matrix cell (nvcim.report.matrix)
_CSV_HEADS = (("sigma", "runs", "seed"), ("fraction", "verified_weights", "verified_devices"),
              ("checkpoint", "dataset", "device_model"))


def nvcim_wrote(path: Path, kind: str) -> bool:
    """Whether the existing file `path` is one nvcim writes as `kind` ("json": a record with "kind" and
    "nvcim_version"; "csv": a header beginning as one of nvcim's CSV files)."""
    try:
        with open(path, encoding="utf-8") as f:
            if kind == "json":
                rec = json.loads(f.read())
                return isinstance(rec, dict) and isinstance(rec.get("kind"), str) and "nvcim_version" in rec
            head = tuple(c.strip() for c in f.readline().split(","))
            return any(head[: len(h)] == h for h in _CSV_HEADS)
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def check_outputs(outputs: Iterable[tuple[str, object]], inputs: Iterable[tuple[str, Path]]) -> None:
    """Raise a one-line ValueError unless every (flag, path) in `outputs` (None: not written) can be written,
    is none of `inputs` (nor inside an input directory) and differs from the other outputs."""
    from nvcim.io.files import check_output_path

    outs = [(flag, Path(p)) for flag, p in outputs if p]
    inputs = list(inputs)
    for flag, out in outs:
        check_output_path(out, flag)
        for what, inp in inputs:
            if not _collides(out, inp):
                continue
            if what == "the checkpoint":
                raise ValueError(f"{flag} {out} is inside the checkpoint {inp} that is evaluated, and writing it would "
                                 "damage the checkpoint: choose a path outside it")
            raise ValueError(f"{flag} {out} is {what} {inp} that is read, and writing it would destroy it: "
                             "choose another path")
    for i, (flag_a, a) in enumerate(outs):
        for flag_b, b in outs[i + 1:]:
            if same_file(a, b):
                raise ValueError(f"{flag_a} {a} and {flag_b} {b} are the same file: give two different paths")
    for flag, out in outs:  # last: the refusals above name the more specific problem
        kind = {"--out": "json", "--csv": "csv"}.get(flag)
        if kind and out.is_file() and not nvcim_wrote(out, kind):
            what = "an nvcim result (JSON)" if kind == "json" else "a CSV file nvcim wrote"
            raise ValueError(f"{flag} {out} exists and is not {what}: nvcim replaces only its own files; choose "
                             "another path or remove the file")
        if kind == "json" and out.is_file() and _is_sweep_result(out):
            raise ValueError(f"{flag} {out} is a sweep cell's result, which `nvcim sweep` owns (its report and resume "
                             "read it): choose another path")


def _is_sweep_result(path: Path) -> bool:
    """Whether the nvcim JSON at `path` is a sweep cell's result.json or failed.json (it records its "cell")."""
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(rec, dict) and isinstance(rec.get("cell"), dict)
