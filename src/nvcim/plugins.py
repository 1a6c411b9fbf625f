"""User extensions without forking: import the user's code that registers models, data sets, methods,
variation kinds or backends before the command line (or a sweep worker) looks anything up.

    nvcim train --plugin my_models.py --model my_net ...        # a file
    nvcim eval CKPT --plugin mypkg.nvcim_ext                     # an importable module
    NVCIM_PLUGINS=my_models.py,mypkg.ext nvcim sweep spec.toml   # the same for every command

A plugin is any Python module; registering is what it does when imported:

    from nvcim.models import register_model
    @register_model("my_net")
    def my_net(num_classes=10, in_channels=1, width=1.0, image_size=32): ...

Each plugin is imported once per process (a file under a name derived from its absolute path; its directory is
appended to sys.path first, as `python FILE.py` would, so it can import modules beside it: `fingerprint()` hashes the
plugin file and the modules beside it that it imported (a helper module or package it imports at the top, or whose
names it holds; one imported later, inside a function, is not seen: import it at the top or make a package and give
its module name).
`loaded()` lists the plugins in load order, as checkpoints record them (files as absolute paths),
so that `nvcim eval` can name the plugins a checkpoint needs when they are missing.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Iterable

ENV_VAR = "NVCIM_PLUGINS"
_LOADED: list[str] = []  # plugin specs in load order (files: absolute paths)
_DIGESTS: dict[str, str] = {}  # spec -> sha256 of its sources as they were when imported (fingerprint)
_BESIDE: dict[str, list[str]] = {}  # a file plugin -> the modules beside it that it imported (top-level names)


class PluginError(ValueError):
    """A plugin that cannot be found or raised while being imported (one line, names the plugin)."""


def _is_file_spec(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec or "/" in spec


def canonical(spec: str) -> str:
    """The form a plugin is recorded under: a file's absolute path, or the module name."""
    spec = spec.strip()
    return str(Path(spec).expanduser().resolve()) if _is_file_spec(spec) else spec


def load_plugin(spec: str) -> str:
    """Import one plugin (a .py file or a module name); returns its canonical form. Idempotent."""
    if not isinstance(spec, str) or not spec.strip():
        raise PluginError(f"plugin {spec!r} is empty: give a .py file or an importable module name")
    name = canonical(spec)
    if name in _LOADED:
        return name
    global _NVCIM_NAMES
    if _NVCIM_NAMES is None:  # what nvcim itself registered: plugin_names() is everything added after this
        _NVCIM_NAMES = {kind: set(reg.names()) for kind, reg in _registries().items()}
    registered = {kind: dict(reg.items()) for kind, reg in _registries().items()}  # put back if the import fails
    try:
        if _is_file_spec(spec):
            path = Path(name)
            if not path.is_file():
                raise PluginError(f"plugin file {spec} does not exist: give the path of a .py file")
            if str(path.parent) not in sys.path:  # as `python FILE.py` would: the plugin imports modules beside it
                sys.path.append(str(path.parent))
            module_name = "nvcim_plugin_" + hashlib.sha1(name.encode()).hexdigest()[:12]
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            before = set(sys.modules)
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(module_name, None)
                raise
            _BESIDE[name] = _modules_beside(path.parent, _imported_by(module, set(sys.modules) - before))
        else:
            importlib.import_module(name)
    except PluginError:
        _restore(registered)
        raise
    except Exception as exc:  # the user's code: name it, one line
        _restore(registered)  # what it registered before failing: a fixed file can be loaded again in this process
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PluginError(f"plugin {spec} failed to import: {type(exc).__name__}: {first}"
                          " (fix the plugin, or check the name / path)") from None
    _LOADED.append(name)
    _DIGESTS[name] = _digest(name)  # the code imported now: an edit made later (during a training) is not it
    return name


def _restore(registered: dict[str, dict]) -> None:
    """Put the registries back as `registered` holds them (names a failed plugin added removed, those it replaced
    restored)."""
    for kind, reg in _registries().items():
        before = registered[kind]
        for name in [n for n in reg if n not in before]:
            reg.unregister(name)
        for name, entry in before.items():
            if reg.get(name, None) is not entry:
                reg[name] = entry


def load_plugins(specs: Iterable[str] = (), *, env: bool = True) -> list[str]:
    """Import the plugins named in $NVCIM_PLUGINS (comma-separated; unless `env` is False), then `specs`."""
    names = [s for s in os.environ.get(ENV_VAR, "").split(",") if s.strip()] if env else []
    return [load_plugin(s) for s in [*names, *specs]]


def loaded() -> list[str]:
    """The plugins imported so far, in order (what a checkpoint records)."""
    return list(_LOADED)


def _imported_by(module, new_names: set[str]) -> set[str]:
    """Top-level names of the modules a plugin imported: those that its import added to sys.modules, and those its
    globals refer to (a helper another module had imported first)."""
    names = {n.split(".")[0] for n in new_names}
    for value in vars(module).values():
        owner = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
        if isinstance(owner, str):
            names.add(owner.split(".")[0])
    return names


def _location(module_name: str) -> Path | None:
    """Where a top-level module lives: its .py file, or its package's directory (a namespace package's too)."""
    module = sys.modules.get(module_name)
    origin = getattr(module, "__file__", None)
    if origin:
        f = Path(origin).resolve()
        return f.parent if f.name == "__init__.py" else f
    paths = list(getattr(module, "__path__", None) or [])  # a namespace package: no __init__.py, no __file__
    return Path(paths[0]).resolve() if len(paths) == 1 else None


def _modules_beside(directory: Path, names: set[str]) -> list[str]:
    """Those of `names` (top-level modules) that live in `directory` (DIR/NAME.py or the package DIR/NAME/), sorted:
    what a file plugin there imports from beside it (a virtual environment or a source tree below it is not)."""
    found = []
    for name in names:
        where = _location(name)
        if where is not None and where.parent == directory and where.name in (name, name + ".py"):
            found.append(name)
    return sorted(found)


def _files_of(module_name: str) -> list[tuple[str, Path]]:
    """(name, file) of every .py file of a top-level module or package (named relative to the package; hidden files
    such as editor lock files .#x.py and anything that is not a readable file left out)."""
    where = _location(module_name)
    if where is None or not where.exists():
        return []
    if where.is_file():
        return [(where.name, where)]
    return [(f.relative_to(where).as_posix(), f) for f in sorted(where.rglob("*.py"))
            if not any(part.startswith(".") for part in f.relative_to(where).parts) and f.is_file()]


def sources(spec: str) -> list[tuple[str, Path]]:
    """(name, file) of a loaded plugin's sources: a file plugin and the modules beside it that it imported (each
    named by its file's name, a package's files as PACKAGE/PATH), or for a plugin given by module name every .py file
    of its top-level package (or its one module), named relative to that package, so that a moved checkout keeps
    its fingerprint."""
    if _is_file_spec(spec) and Path(spec).is_file():
        beside = []
        for module_name in _BESIDE.get(spec, []):
            package = (_location(module_name) or Path()).is_dir()
            beside += [(f"{module_name}/{name}" if package else name, f) for name, f in _files_of(module_name)]
        return [(Path(spec).name, Path(spec)), *beside]
    return _files_of(spec.split(".")[0])


def fingerprint(specs: Iterable[str] | None = None) -> str | None:
    """sha256 (hex) of the loaded plugins' names and source files (of `specs` among them, e.g. those a checkpoint
    records), None when none is loaded: what a checkpoint and a sweep cell record, so that models built by another
    version of a plugin are not taken for the same arm."""
    chosen = list(_LOADED) if specs is None else [s for s in _LOADED if s in set(specs)]
    if not chosen:
        return None
    # one per plugin, named by its file's name or its module name (the same code anywhere on disk), as imported
    digests = [_DIGESTS.get(spec) or _digest(spec) for spec in chosen]
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()


def _digest(spec: str) -> str:
    """sha256 of one loaded plugin's name and source files, read now (load_plugin keeps it from the import)."""
    h = hashlib.sha256((Path(spec).name if _is_file_spec(spec) else spec).encode() + b"\0")
    for name, f in sources(spec):
        try:
            h.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
        except OSError:  # vanished or unreadable since it was listed: its name alone
            h.update(name.encode() + b"\0?\0")
    return h.hexdigest()


_NVCIM_NAMES: dict[str, set] | None = None  # the registries' names before the first plugin was imported


def _registries() -> dict:
    from nvcim.core.variation import VARIATIONS
    from nvcim.data.registry import REGISTRY as DATASETS
    from nvcim.methods import METHODS
    from nvcim.models import MODELS

    return {"model": MODELS, "method": METHODS, "dataset": DATASETS, "variation": VARIATIONS}


def plugin_names(kind: str) -> set:
    """The names of `kind` ("model", "method", "dataset", "variation") that plugins registered in this process (those
    not there before the first plugin was imported)."""
    if _NVCIM_NAMES is None:
        return set()
    return set(_registries()[kind].names()) - _NVCIM_NAMES[kind]


def plugin_args(argv: list[str]) -> list[str]:
    """The values of every `--plugin X` / `--plugin=X` in a command line (read before the parser is built,
    since the parser's choices and method flags come from the registries the plugins fill)."""
    out = []
    for i, a in enumerate(argv):
        flag, eq, value = a.partition("=")
        if len(flag) < 5 or not "--plugin".startswith(flag):  # argparse takes "--plu" .. "--plugi" as --plugin too
            continue
        if eq:
            out.append(value)
        elif i + 1 < len(argv):
            out.append(argv[i + 1])
    return out


def missing_hint(recorded: Iterable[str] | None) -> str:
    """", it was saved with plugin(s) [...] not loaded now: pass --plugin ..." or "" when nothing is missing."""
    missing = [p for p in (recorded or []) if isinstance(p, str) and p not in _LOADED]
    if not missing:
        return ""
    flags = " ".join(f"--plugin {p}" for p in missing)
    return (f"; it was saved with plugin(s) {missing}, not loaded now: pass {flags} (or set {ENV_VAR}), only if you "
            "trust that code (loading a plugin runs it)")
