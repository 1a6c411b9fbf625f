"""Small file helpers shared by every module that writes results or reads settings.

- `atomic_write_bytes` / `atomic_write_text`: write to a temp file in the same directory, fsync,
  then `os.replace`, so a reader (or a rerun after SIGKILL) sees the old file or the new one,
  never half of one.
- `read_mapping_file`: a TOML / YAML / JSON file holding one mapping, with one-line errors.
- `check_output_path`: refuse, before any slow work, an output path that cannot be written
  (a file where a directory is needed or the reverse, a parent that is a file, no write permission).
- `publish_directory`: move a finished temporary directory into place, replacing the previous one only
  once the new one is there (the caller decides first that the previous one may be replaced).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux: /proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic set-and-restore
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes, mode: int | None = None) -> Path:
    """Write `data` to `path` atomically; returns the path. Mode: 0666 less the umask unless given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask() if mode is None else mode)  # mkstemp's 0600 is too private
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def fsync_path(path) -> None:
    """fsync a file or directory where the OS allows it (a directory's entries: renames into it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def publish_directory(tmp, path) -> Path:
    """Rename the finished directory `tmp` (a sibling of `path`, its files written) to `path`, atomically: an
    existing `path` is renamed aside first, deleted only after the new one is in place, and put back if that
    fails. The caller checks beforehand that `path` may be replaced. Every file in `tmp` is fsynced first."""
    import shutil

    tmp, path = Path(tmp), Path(path)
    for file in tmp.iterdir():
        fsync_path(file)
    fsync_path(tmp)
    old = None
    try:
        if path.exists() or path.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:  # a failed rename, or Ctrl-C between the two: the previous directory is put back
        if old is not None and (old.exists() or old.is_symlink()) and not path.exists():
            os.replace(old, path)
            old = None
        raise
    finally:
        if old is not None and old.is_symlink() and path.exists():  # `path` was a link: the link goes, its target
            old.unlink()                                             # is left as it is
        elif old is not None and old.exists() and path.exists():  # deleted only once the new one is in place
            shutil.rmtree(old, ignore_errors=True)
    return path


def atomic_write_text(path, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically (newlines kept as given)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def check_output_path(path, what: str, *, is_dir: bool = False) -> Path:
    """Raise ValueError (one line, naming `what`, e.g. "--out") unless `path` can be written as a file
    (or, with is_dir, created or reused as a directory): checked before the work whose result it holds."""
    path = Path(path)
    if path.is_symlink() and not path.exists():  # a dangling link: every later write would fail, or replace it
        raise ValueError(f"{what} {path} is a symbolic link to {os.readlink(path)}, which does not exist: create "
                         "its target or choose another path")
    if path.exists():
        if is_dir and not path.is_dir():
            raise ValueError(f"{what} {path} is a file: give a directory path")
        if not is_dir and path.is_dir():
            raise ValueError(f"{what} {path} is a directory: give a file path")
    target = path if is_dir and path.is_dir() else path.parent
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what} {path}: {existing} is a file, not a directory: choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: no permission to write in {existing}: choose another path")
    try:  # permission bits do not tell everything (root, read-only mounts, /proc): a file created and removed
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".nvcim-probe-", suffix=".tmp"):  # a temp to cleaners
            pass
    except OSError as exc:
        raise ValueError(f"{what} {path}: files cannot be created in {existing} ({exc.strerror or exc}): choose "
                         "another path") from None
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class DuplicateKey(ValueError):
    """A key given twice in one mapping of a JSON or YAML file (args[0]: the key)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object_pairs_hook: the mapping, refusing a repeated key."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def _yaml_unique(text: str):
    """yaml.safe_load, refusing a key repeated within one mapping."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *anchor": its keys may be overridden here
                    continue
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise DuplicateKey(key)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def read_mapping_file(path, what: str) -> dict[str, Any]:
    """The mapping held by a .toml, .yaml/.yml or .json file; `what` names it in errors ("sweep spec")."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder: give the file (.toml, .yaml, .yml or .json)")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist: check the path")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ValueError(f"{what} {path} has unknown extension {path.suffix!r}: use .toml, .yaml, .yml or .json")
    try:
        text = path.read_text(encoding="utf-8")
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text, object_pairs_hook=_unique_keys)
        else:
            data = _yaml_unique(text)
            data = {} if data is None else data
    except DuplicateKey as exc:  # TOML refuses a repeated key itself; JSON and YAML would keep the last silently
        raise ValueError(f"{what} {path}: key {exc.args[0]!r} is given twice (the second would silently replace the "
                         "first): merge them into one") from None
    except Exception as exc:  # TOMLDecodeError, JSONDecodeError, yaml errors, OSError, UnicodeDecodeError
        raise ValueError(f"{what} {path} cannot be read ({_first_line(exc)}): fix its syntax") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (OSError when it cannot be read)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
