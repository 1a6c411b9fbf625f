"""The finished pieces of an interrupted `nvcim eval` (this module owns their format): OUT.partial/ beside the output
keeps one file per finished Monte Carlo evaluation (a cell of the device-model matrix), so the same command run again
takes them instead of evaluating them again, and ends with the results an uninterrupted run writes (every chip is
drawn from the seed, so a piece is exactly what evaluating it again would give).

    partial = PartialResults.beside(out)   # OUT.partial/ (created on the first put); ValueError (one line) if a
                                           # file, a symlink or an unwritable directory is there
    res = partial.get(key)                 # the MCResult saved under `key` by an earlier run, or None (absent;
                                           # damaged: a warning)
    partial.put(key, res)                  # atomically; never replacing a file that is not nvcim's piece; a write
                                           # that fails is a warning (this run goes on, without a resume point)
    partial.remove()                       # once the output is written: nvcim's pieces, then the folder if empty

`key` is a JSON-able dict naming everything the result depends on (checkpoint and data-file fingerprints, device,
chips, seed, flags, `code_fingerprint()` of nvcim, its plugins and torch): a piece whose key differs in anything is
never taken, and only pieces an earlier run left are taken (two identical evaluations in one run are both done).
A piece is
{"format": "nvcim-eval-partial", "version": 1, "key": {...}, "result": MCResult.to_dict()}, named
piece-<first 16 hex digits of the sha256 of the key's canonical JSON>.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

from nvcim.evaluate.results import MCResult, write_results_json

FORMAT, VERSION = "nvcim-eval-partial", 1
SUFFIX = ".partial"


def code_fingerprint() -> str:
    """sha256 (hex) of the code a result depends on: every .py file of the nvcim package, the plugins loaded (their
    files; for a module name, its top-level package's .py files) and the torch version, so that a piece of other code
    is never taken."""
    import torch

    import nvcim
    from nvcim import plugins

    h = hashlib.sha256(torch.__version__.encode())
    root = Path(nvcim.__file__).resolve().parent
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    h.update((plugins.fingerprint() or "").encode())
    return h.hexdigest()


def _canonical(key: Mapping[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"), allow_nan=False)


class PartialResults:
    """The pieces kept in one directory (module docstring)."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.taken = 0  # pieces get() returned: evaluations this run did not repeat
        self._earlier = {p.name for p in self.dir.glob("piece-*.json")} if self.dir.is_dir() else set()
        self._broken = False  # a put failed: no more pieces this run

    @classmethod
    def beside(cls, out) -> "PartialResults":
        out = Path(out)
        d = out.with_name(out.name + SUFFIX)
        what = ("a symlink" if d.is_symlink() else "a file" if d.exists() and not d.is_dir()
                else "a directory you cannot write" if d.is_dir() and not os.access(d, os.W_OK | os.X_OK) else None)
        if what:
            raise ValueError(f"{d} is {what}, where nvcim eval keeps the finished pieces of an interrupted run: move "
                             "it away, or choose another output")
        return cls(d)

    def _path(self, key: Mapping[str, Any]) -> Path:
        return self.dir / f"piece-{hashlib.sha256(_canonical(key).encode()).hexdigest()[:16]}.json"

    def _read(self, path: Path) -> dict | None:
        """The piece at `path` if it is one of nvcim's (any key), else None."""
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        ok = (isinstance(d, dict) and d.get("format") == FORMAT and d.get("version") == VERSION
              and isinstance(d.get("key"), dict) and isinstance(d.get("result"), dict))
        return d if ok else None

    def get(self, key: Mapping[str, Any]) -> MCResult | None:
        path = self._path(key)
        if path.name not in self._earlier or not path.is_file():  # only what an earlier run left
            return None
        piece = self._read(path)
        result = None
        if piece is not None and _canonical(piece["key"]) == _canonical(key):
            try:
                result = MCResult.from_dict(piece["result"])
            except (KeyError, TypeError, ValueError):
                result = None
        if result is None:
            warnings.warn(f"{path} cannot be used (damaged, or of another evaluation): that evaluation runs again")
            return None
        self.taken += 1
        return result

    def put(self, key: Mapping[str, Any], result: MCResult) -> None:
        path = self._path(key)
        if self._broken:
            return
        if path.exists() and self._read(path) is None:  # not nvcim's piece: never replaced
            warnings.warn(f"{path} is not nvcim's: this evaluation is not kept for a resume (move that file away)")
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_results_json(path, {"format": FORMAT, "version": VERSION, "key": dict(key), "result": result})
        except OSError as exc:  # the evaluation goes on; only the resume point is lost
            self._broken = True
            warnings.warn(f"cannot keep finished evaluations in {self.dir} ({exc.strerror or exc}): this run goes on, "
                          "but an interruption would start it again")

    def remove(self) -> None:
        """Delete nvcim's pieces and the directory; anything else there is kept (with a warning)."""
        if self.dir.is_symlink() or not self.dir.is_dir():
            return
        others = []
        try:
            for p in sorted(self.dir.iterdir()):
                ours = p.is_file() and not p.is_symlink() and (
                    (p.name.startswith("piece-") and p.suffix == ".json" and self._read(p) is not None)
                    or (p.name.startswith(".piece-") and p.name.endswith(".tmp")))  # a write a kill interrupted
                if ours:
                    p.unlink()
                else:
                    others.append(p.name)
            if not others:
                self.dir.rmdir()
        except OSError as exc:
            warnings.warn(f"cannot remove {self.dir} ({exc.strerror or exc}): delete it by hand")
            return
        if others:
            warnings.warn(f"{self.dir} also holds {others[:3]}, which are not nvcim's: left there")
