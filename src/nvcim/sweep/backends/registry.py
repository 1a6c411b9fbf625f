"""The registry of sweep backends: where the pending cells of a sweep run, by name.

    @register_backend("mine", help="one line for `nvcim sweep --help`")
    def run_mine(cells, out, spec, on_done, say, *, workers, address):
        for cell in cells:
            on_done(run_cell(cell, out, threads=1))       # nvcim.sweep.cell_run.run_cell

    run_sweep(spec, out_dir, backend="mine")              # nvcim sweep SPEC --out DIR --backend mine

A backend runs every cell of `cells` (the pending Cells, in the sweep's order) into the sweep directory
`out` and calls `on_done(summary)` once per cell with run_cell's one-cell summary (a failing cell is a
summary with status "failed", never an exception). `spec` is the SweepSpec (`spec.resources`: threads,
CPUs, GPUs per cell), `say(line)` warns the user (one line, without a "warning: " prefix; shown even when
the sweep is quiet), `workers` is how many cells run at once and `address` a cluster's address (None: none
given). remote=True: given an address, the cells run on machines that hold their own data sets, so this
machine's are not checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from nvcim.registry import Registry


@dataclass(frozen=True)
class Backend:
    name: str
    run: Callable[..., None]  # run(cells, out, spec, on_done, say, *, workers, address)
    help: str  # what it does, one line
    remote: bool = False  # with an address, the cells run on machines that hold their own data
    check: Callable[[], None] | None = None  # raises a one-line ValueError when it cannot run here (before any write)


BACKENDS: Registry[Backend] = Registry("backend")  # name -> Backend, in the order they were registered


def register_backend(name: str, *, help: str, remote: bool = False,
                     check: Callable[[], None] | None = None) -> Callable[[Callable], Callable]:
    """Function decorator: make `run` the backend called `name` (signature: see the module docstring); `check()`
    raises a one-line ValueError when the backend cannot run here (a missing package), before the sweep writes."""

    def wrap(run: Callable) -> Callable:
        if name in BACKENDS and BACKENDS[name].run is not run:
            raise ValueError(f"backend {name!r} is already registered: choose another name")
        BACKENDS.register(name, Backend(name, run, help, remote, check), replace=True)
        return run

    return wrap


def get_backend(name: str) -> Backend:
    """The backend called `name`; an unknown name is a one-line ValueError listing the known ones."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend={name!r} is unknown: use one of {list(BACKENDS)}")
    return BACKENDS[name]

