"""The training state between epochs (this module owns the format): an interrupted training resumes from it.

    save_train_state(path, tensors, record)   # after every epoch, atomically (the previous state stays until then)
    recover_train_state(path)                 # before reading: undo what a kill in the middle of a save left
    state = read_train_state(path)            # TrainState(record, tensors); TrainStateError (one line) when unusable
    remove_train_state(path)                  # once the final checkpoint is written: nvcim's two files, then the folder

A directory holding two files:
  state.json  human-readable: {"format": "nvcim-train-state", "version": 1, "nvcim_version", "created",
              "epoch" (epochs finished), "epochs", "train" (the TrainConfig as a dict), "data" (what the
              splits were: sizes, file fingerprint), "loop" (history, best epoch and scores, times; LOOP_FIELDS),
              "run" (where the epochs ran: device type, amp, CUDA devices, torch threads; RUN_FIELDS)}
  state.pt    the tensors (torch.save): {"model", "task" (a method's own modules, e.g. IRS heads), "optimizer",
              "scheduler", "rng" {"torch", "cuda", "generator"}, "best" (None or the best state dict so far),
              "initial" (the initial state dict)}; read with torch.load(weights_only=True), so no code runs,
              after its archive's CRC-32 checksums are checked (torch.load checks none).

`nvcim.train.train(state_dir=...)` writes and reads it; `nvcim train --out DIR` keeps it beside DIR as
DIR.train-state, a sweep cell inside the cell's folder (train_state/ next to checkpoint/).
"""

from __future__ import annotations

import datetime as _dt
import glob
import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from nvcim.io.files import current_umask, publish_directory

FORMAT = "nvcim-train-state"
VERSION = 1
RECORD_FILE = "state.json"
TENSORS_FILE = "state.pt"
TENSOR_KEYS = ("model", "task", "optimizer", "scheduler", "rng", "best", "initial")


class TrainStateError(ValueError):
    """A training state that cannot be used (unreadable, damaged, of another configuration): one line."""


class TrainStateSaveError(TrainStateError):
    """The training state could not be written (disk full, no permission): one line."""


# state.json's "loop": what the training loop needs besides tensors, with the types it must have
def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _opt_num(v) -> bool:
    return v is None or _num(v)


LOOP_FIELDS = {
    "history": lambda v: isinstance(v, list) and all(isinstance(h, dict) for h in v),
    "best_epoch": lambda v: v is None or (type(v) is int and v >= 1),
    "best_val_noisy": _opt_num, "best_val_clean": _opt_num, "best_score": _opt_num,
    "train_time_s": _num, "wall_time_s": _num,
    "images": lambda v: type(v) is int and v >= 0,
    "resumed_after_epochs": lambda v: isinstance(v, list) and all(type(e) is int for e in v),
}
# state.json's "run": where the finished epochs ran (a resumed part must run alike)
RUN_FIELDS = {"device_type": lambda v: isinstance(v, str), "amp": lambda v: isinstance(v, bool),
              "cuda_devices": lambda v: type(v) is int and v >= 0, "threads": lambda v: type(v) is int and v >= 1}


def _is_bytes(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype == torch.uint8


def _is_state_dict(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())


TENSOR_CHECKS = {
    "model": _is_state_dict, "task": _is_state_dict, "initial": _is_state_dict,
    "best": lambda v: v is None or _is_state_dict(v),
    "optimizer": lambda v: isinstance(v, dict) and "state" in v and "param_groups" in v,
    "scheduler": lambda v: v is None or isinstance(v, dict),
    "rng": lambda v: (isinstance(v, dict) and _is_bytes(v.get("torch")) and _is_bytes(v.get("generator"))
                      and (v.get("cuda") is None or (isinstance(v["cuda"], list) and all(map(_is_bytes, v["cuda"]))))),
}


_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]'\"])\.\s+(?=[A-Z(])")


def cause(exc: BaseException, limit: int = 160, typed: bool = True) -> str:
    """An exception as a compact clause: "Type: the first sentence of its first line", cut at a word boundary (" ...")
    past `limit` characters (torch's messages go on with advice about other files: "This is an internal miniz error.
    If you ..."); the type alone when it says nothing; without the type (unless it says nothing) when not `typed`."""
    lines = str(exc).strip().splitlines()
    text = _SENTENCE_END.split(" ".join(lines[0].split()), maxsplit=1)[0].rstrip(".") if lines else ""
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    if not text:
        return type(exc).__name__
    return f"{type(exc).__name__}: {text}" if typed else text


@dataclass(frozen=True)
class TrainState:
    """record: state.json as a dict; tensors: state.pt's mapping (TENSOR_KEYS)."""

    record: dict
    tensors: dict


def is_train_state_dir(path) -> bool:
    """True when `path` is a directory whose state.json is nvcim's training state (whatever else it holds)."""
    try:
        rec = json.loads((Path(path) / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(rec, dict) and rec.get("format") == FORMAT


def _foreign(path: Path) -> list[str]:
    """Entries of `path` that nvcim's training state does not write."""
    return sorted(p.name for p in path.iterdir() if p.name not in (RECORD_FILE, TENSORS_FILE))


def state_dir_problem(path) -> str | None:
    """Why a training state must not be written at `path` (None: it may): a file of that name, or a directory
    holding anything but nvcim's training state (never overwritten)."""
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_dir():
        return "a file of that name exists: move it, or choose another output"
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return None
    if not is_train_state_dir(path):
        return f"the directory exists and is not nvcim's training state ({entries[:3]}): move it, or choose another output"
    others = _foreign(path)
    if others:
        return f"the training state directory also holds {others[:3]}, which are not nvcim's: move them out of it"
    return None


def _failed_checksum(file: Path) -> str | None:
    """The first member of torch.save's zip archive whose CRC-32 does not match its data (bit rot, a bad copy), else
    None (also for a file that is no zip archive: torch.load says what is wrong with it; members written without a
    checksum, CRC 0, are not checked)."""
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):  # no zip archive: torch.load says what it is
        return None
    try:
        with archive as z:
            for info in z.infolist():
                if info.CRC == 0 and info.file_size:  # written without checksums (torch's compute_crc32 = False)
                    continue
                with z.open(info) as member:  # reading to the end checks the member's CRC-32
                    while member.read(1 << 20):
                        pass
    except (zipfile.BadZipFile, EOFError) as exc:  # a CRC that does not match: "Bad CRC-32 for file ..."
        return str(exc).removeprefix("Bad CRC-32 for file ") or type(exc).__name__
    except (OSError, ValueError, RuntimeError, NotImplementedError):  # not readable as a zip: torch.load says why
        return None
    except Exception as exc:  # noqa: BLE001 (zlib.error: a damaged deflate stream)
        return f"{type(exc).__name__}"
    return None


def save_train_state(path, tensors: Mapping[str, Any], record: Mapping[str, Any]) -> Path:
    """Write the state (both files) to directory `path`, replacing the previous one atomically."""
    import nvcim

    path = Path(path)
    problem = state_dir_problem(path)
    if problem:
        raise TrainStateError(f"cannot save the training state {path}: {problem}")
    missing = [k for k in TENSOR_KEYS if k not in tensors]
    if missing:
        raise ValueError(f"training state tensors lack {missing}")
    head = {"format": FORMAT, "version": VERSION, "nvcim_version": nvcim.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    text = json.dumps({**head, **record}, indent=2, allow_nan=False) + "\n"
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        torch.save(dict(tensors), tmp / TENSORS_FILE)
        (tmp / RECORD_FILE).write_text(text, encoding="utf-8")
        umask = current_umask()
        for file in (TENSORS_FILE, RECORD_FILE):
            os.chmod(tmp / file, 0o666 & ~umask)
        os.chmod(tmp, 0o777 & ~umask)
        publish_directory(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        raise TrainStateSaveError(f"cannot save the training state {path}: {cause(exc, typed=False)}: check the disk "
                                  "has space and the directory is writable") from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_train_state(path) -> TrainState:
    """The state at `path`; TrainStateError naming the problem when it cannot be read or is not nvcim's."""
    path = Path(path)
    try:
        rec = json.loads((path / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise TrainStateError(f"training state {path}: {RECORD_FILE} cannot be read ({type(exc).__name__})") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise TrainStateError(f"training state {path}: {RECORD_FILE} is not nvcim's training state")
    if rec.get("version") != VERSION:
        raise TrainStateError(f"training state {path}: format version {rec.get('version')!r}, this nvcim reads {VERSION}")
    epoch, epochs = rec.get("epoch"), rec.get("epochs")
    if not (type(epoch) is int and type(epochs) is int and 1 <= epoch < epochs):
        raise TrainStateError(f"training state {path}: epoch {epoch!r} of {epochs!r} is not a resumable point")
    for key in ("train", "data", "loop", "run"):
        if not isinstance(rec.get(key), dict):
            raise TrainStateError(f"training state {path}: {RECORD_FILE} has no {key!r} mapping")
    for part, fields in (("loop", LOOP_FIELDS), ("run", RUN_FIELDS)):
        bad = [k for k, ok in fields.items() if not ok(rec[part].get(k))]
        if bad:
            raise TrainStateError(f"training state {path}: {RECORD_FILE} {part}.{bad[0]} is missing or of the wrong type")
    if len(rec["loop"]["history"]) != epoch:
        raise TrainStateError(f"training state {path}: {len(rec['loop']['history'])} epochs of history for epoch {epoch}")
    damaged = _failed_checksum(path / TENSORS_FILE)  # torch.load checks no CRC: a flipped bit would resume
    if damaged:
        raise TrainStateError(f"training state {path}: {TENSORS_FILE} fails its checksum ({damaged}): damaged")
    try:  # weights_only: tensors, numbers, strings and containers only; a pickled object is refused, never run
        tensors = torch.load(path / TENSORS_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (torch raises many types for a damaged or foreign file)
        raise TrainStateError(f"training state {path}: {TENSORS_FILE} cannot be loaded ({cause(exc)})") from None
    if not isinstance(tensors, dict) or any(k not in tensors for k in TENSOR_KEYS):
        raise TrainStateError(f"training state {path}: {TENSORS_FILE} lacks some of {list(TENSOR_KEYS)}")
    bad = [k for k in TENSOR_KEYS if not TENSOR_CHECKS[k](tensors[k])]
    if bad:
        raise TrainStateError(f"training state {path}: {TENSORS_FILE} entry {bad[0]!r} is not what nvcim writes")
    return TrainState(record=rec, tensors=tensors)


def recover_train_state(path) -> None:
    """Tidy what a kill during `save_train_state` left beside `path`: put the previous state back when it was
    renamed aside and the new one never arrived, and delete the half-written temporary directories (only nvcim's
    hidden `.NAME.tmp-*` / `.NAME.old-*` siblings are touched), and a finished state a kill left half-removed
    (`.NAME.done-*`, see `remove_train_state`)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    name = glob.escape(path.name)  # an output named "run[1]" or "run*" must not match other runs' files
    olds = sorted(p for p in path.parent.glob(f".{name}.old-*") if p.is_dir() and is_train_state_dir(p))
    if olds and not path.exists():
        os.replace(olds[-1], path)
        olds = olds[:-1]
    if path.exists():  # also partial copies a kill left while the previous state was being deleted
        olds = [p for p in path.parent.glob(f".{name}.old-*") if p.is_dir()]
    done = [p for p in path.parent.glob(f".{name}.done-*")  # a finished state being removed (remove_train_state):
            if re.fullmatch(r"[a-z0-9_]{8}", p.name.rsplit(".done-", 1)[1])]  # mkdtemp's names only, not a user's
    for p in [*path.parent.glob(f".{name}.tmp-*"), *olds, *done]:
        if p.is_dir() and not p.is_symlink() and not _foreign(p):
            shutil.rmtree(p, ignore_errors=True)


def remove_train_state(path) -> None:
    """Delete nvcim's two files at `path` and, when nothing else is left, the directory (a user's file stays)."""
    path = Path(path)
    if not path.is_dir() or not is_train_state_dir(path):
        return
    if not _foreign(path):  # renamed aside in one step, then deleted: a kill never leaves half a state at `path`
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.done-", dir=path.parent))  # (recover_train_state
        os.rmdir(aside)  # deletes what a kill leaves of it)
        os.replace(path, aside)
        shutil.rmtree(aside, ignore_errors=True)
        return
    for name in (TENSORS_FILE, RECORD_FILE):
        (path / name).unlink(missing_ok=True)
