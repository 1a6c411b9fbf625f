"""Where a sweep's cells run: backends looked up by name in a registry (`register_backend`).

* local (nvcim.sweep.backends.local): workers = 1, in the sweep's own process; workers = N > 1, a
  spawn-context process pool (nvcim.sweep.backends.pool) whose workers die with the sweep process and
  whose dead workers fail only their own cells.
* ray (nvcim.sweep.backends.ray): one Ray task per cell, on a local Ray instance or a cluster.

Every backend calls nvcim.sweep.cell_run.run_cell, which writes a cell's files and never raises for a
failing cell, so every backend produces the same layout and, with the same threads per cell, the same
numbers. Importing this package registers the built-in backends; nvcim.sweep.runner looks them up in
nvcim.sweep.backends.registry.
"""

from nvcim.sweep.backends.local import default_threads, run_local
from nvcim.sweep.backends.pool import run_pool
from nvcim.sweep.backends.ray import RAY_MISSING, run_ray
from nvcim.sweep.backends.registry import BACKENDS, Backend, get_backend, register_backend

__all__ = ["BACKENDS", "Backend", "RAY_MISSING", "default_threads", "get_backend", "register_backend", "run_local",
           "run_pool", "run_ray"]
