"""One registry type for every extension point: variation kinds, models, methods, data sets, backends.

    MODELS = Registry("model")
    @MODELS.register("my_net")            # or MODELS.register("my_net", builder)
    def my_net(num_classes=10, ...): ...
    MODELS.get("my_net")                  # unknown name -> one-line ValueError listing the known ones
    "my_net" in MODELS; sorted(MODELS); MODELS["my_net"]   # a mapping name -> entry

A name must be safe as one directory name (`check_name`: sweeps put names in cell paths).
Registering a name twice is an error unless `replace=True` (a plugin must not silently shadow a
built-in). Plugins (`nvcim.plugins`) are just modules that call `register` on these registries.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def check_name(kind: str, name: Any) -> None:
    """Raise a one-line ValueError unless `name` can be registered: a non-empty string without surrounding
    spaces that is safe as one directory name (sweeps put model and data set names in cell paths): no '/',
    '\\' or control characters, not starting with '.' (so neither '.' nor '..')."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"a {kind} name must be a non-empty string without surrounding spaces, got {name!r}")
    if "/" in name or "\\" in name or name.startswith(".") or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ValueError(f"a {kind} name must be usable as one directory name (no '/', '\\' or control characters, "
                         f"not starting with '.'), got {name!r}")


class Registry(MutableMapping, Generic[T]):
    """A named mapping of extensions of one kind, filled through `register` (item assignment replaces an entry
    on purpose, as `monkeypatch.setitem` does in tests)."""

    def __init__(self, kind: str):
        self.kind = kind  # "model", "method", ... (used in messages)
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None, *, replace: bool = False) -> Any:
        """`register(name, entry)`, or `@register(name)` as a decorator; returns the entry."""
        check_name(self.kind, name)

        def add(obj: T) -> T:
            if name in self._entries and not replace and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered: choose another name (or pass "
                                 f"replace=True to register_{self.kind} to shadow it on purpose)")
            self._entries[name] = obj
            return obj

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> None:
        """Remove `name` (tests and plugins that clean up after themselves)."""
        self._entries.pop(name, None)

    def get(self, name: str, default: Any = ...) -> T:  # type: ignore[override]
        """The entry called `name`; an unknown name raises ValueError naming the known ones."""
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        if default is not ...:
            return default
        raise ValueError(f"unknown {self.kind} {name!r}: use one of {sorted(self._entries)}")

    def names(self) -> list[str]:
        return sorted(self._entries)

    # Mapping interface ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __setitem__(self, name: str, entry: T) -> None:
        self.register(name, entry, replace=True)

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"

