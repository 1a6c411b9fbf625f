"""The layout rules of the package (issue #17), checked on every run: files small enough to hold in one's
head, no module importing another's underscore names, and no import cycle between nvcim's top-level
modules and packages (imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "nvcim"
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for f in SRC.rglob("*.py"):
        parts = f.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _top(name: str) -> str:
    return ".".join(name.split(".")[:2])


def _imports(name: str, f: Path, mods: dict[str, Path]):
    """(imported module, imported name or None) for every import in the file, relative ones resolved."""
    pkg = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            yield from ((a.name, None) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                target = f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                yield target, a.name


def test_no_source_file_is_too_long():
    long = {n: len(f.read_text().splitlines()) for n, f in _modules().items()}
    assert not {n: k for n, k in long.items() if k > MAX_LINES}


def test_no_module_imports_another_ones_private_names():
    mods = _modules()
    bad = [f"{n} imports {m}.{item}" for n, f in mods.items() for m, item in _imports(n, f, mods)
           if m.startswith("nvcim") and item and item.startswith("_") and not item.startswith("__")
           and _top(m) != _top(n)]
    assert not bad


def test_no_import_cycle_between_top_level_modules():
    mods = _modules()
    edges: dict[str, set[str]] = {}
    for n, f in mods.items():
        for m, _ in _imports(n, f, mods):
            if m.startswith("nvcim.") and _top(m) != _top(n):
                edges.setdefault(_top(n), set()).add(_top(m))
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(n: str, path: list[str]) -> list[str] | None:
        state[n] = 1
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return path + [m]
            if m not in state and (cycle := visit(m, path + [m])):
                return cycle
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state:
            cycle = visit(n, [n])
            assert cycle is None, " -> ".join(cycle)
