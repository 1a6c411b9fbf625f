"""Random draws of large tensors on every thread the forward uses, reproducibly (the chips' random stream).

    normal_(out, generator=gen)            # out ~ N(0, 1) in place; normal_(out, 0.0, std, gen) for N(0, std^2)
    uniform_(out, generator=gen)           # out ~ U[0, 1) in place

A CPU generator (mt19937) draws one value after the other, so one stream cannot use more than one
thread. A tensor of more than BLOCK elements is therefore drawn in blocks of BLOCK consecutive
elements (C order): the caller's generator first gives one 62-bit seed per block (one `torch.randint`
call), block b is then drawn from a fresh CPU generator seeded with seed b, and the blocks run on
`torch.get_num_threads()` threads. The values depend on the caller's generator only, never on the
thread count. A tensor of at most BLOCK elements, or one drawn by a non-CPU generator (CUDA draws in
parallel anyway), is drawn from the caller's generator directly, exactly as `torch.randn` /
`torch.rand` draw it (so small models, e.g. an MLP or the legacy test model, keep the draws of earlier
versions; a tensor above BLOCK elements got other, equally distributed, values before this module).
generator=None means torch's default generator of `out`'s device.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

BLOCK = 1 << 16  # elements drawn from one block generator (256 KiB of float32: ~0.3-0.4 ms of randn)

_POOL_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None
_POOL_KEY: tuple[int, int] | None = None  # (process id, workers) the pool was made for


def _pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of `workers` threads (rebuilt when the thread count changes, and in a forked child,
    which inherits the pool object but none of its threads)."""
    global _POOL, _POOL_KEY
    key = (os.getpid(), workers)
    with _POOL_LOCK:
        if _POOL is None or _POOL_KEY != key:
            if _POOL is not None and _POOL_KEY[0] == key[0]:
                _POOL.shutdown(wait=False)
            _POOL, _POOL_KEY = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nvcim-rng"), key
        return _POOL


def _blocked(out: torch.Tensor, generator: torch.Generator | None) -> bool:
    """True when `out` is drawn block by block (a CPU draw of more than BLOCK elements)."""
    where = generator.device if generator is not None else out.device
    return out.numel() > BLOCK and where.type == "cpu" and out.device.type == "cpu"


def _fill(out: torch.Tensor, generator: torch.Generator | None, draw) -> torch.Tensor:
    """draw(view, generator) on `out` as a whole, or per block from per-block generators (module docstring)."""
    if not _blocked(out, generator):
        draw(out, generator)
        return out
    flat = out.view(-1) if out.is_contiguous() else torch.empty(out.numel(), dtype=out.dtype)
    count = (flat.numel() + BLOCK - 1) // BLOCK
    seeds = torch.randint(0, 1 << 62, (count,), generator=generator).tolist()

    def block(b: int) -> None:
        draw(flat[b * BLOCK:(b + 1) * BLOCK], torch.Generator().manual_seed(seeds[b]))

    workers = min(torch.get_num_threads(), count)
    if workers <= 1 or threading.current_thread().name.startswith("nvcim-rng"):
        for b in range(count):
            block(b)
    else:
        list(_pool(workers).map(block, range(count)))
    if flat.data_ptr() != out.data_ptr():
        out.copy_(flat.view(out.shape))
    return out


def map_chunks(count: int, generator: torch.Generator | None, work) -> None:
    """work(start, stop, gen) for the chunks [start, stop) of BLOCK consecutive items of `count`, each with its own
    generator: the caller's generator itself for a single chunk (count <= BLOCK), else one CPU generator per
    chunk seeded like `normal_`'s blocks (one `torch.randint` call on the caller's generator), the chunks on
    torch's threads; a non-CPU generator (drawing in parallel anyway) does all items as one chunk. So a chunk drawing `normal_(out[start:stop], generator=gen)` first draws exactly the values
    `normal_(out, generator=generator)` puts there. `work` must only write to its own chunk's outputs."""
    if count <= BLOCK or (generator is not None and generator.device.type != "cpu"):
        work(0, count, generator)
        return
    chunks = (count + BLOCK - 1) // BLOCK
    seeds = torch.randint(0, 1 << 62, (chunks,), generator=generator).tolist()

    def chunk(c: int) -> None:
        work(c * BLOCK, min(count, (c + 1) * BLOCK), torch.Generator().manual_seed(seeds[c]))

    workers = min(torch.get_num_threads(), chunks)
    if workers <= 1 or threading.current_thread().name.startswith("nvcim-rng"):
        for c in range(chunks):
            chunk(c)
    else:
        list(_pool(workers).map(chunk, range(chunks)))


def normal_(out: torch.Tensor, mean: float = 0.0, std: float = 1.0,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """out ~ N(mean, std^2) in place (`Tensor.normal_`, block by block above BLOCK elements); returns out."""
    return _fill(out, generator, lambda t, g: t.normal_(mean, std, generator=g))


def uniform_(out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """out ~ U[0, 1) in place (`Tensor.uniform_`, as `torch.rand` draws; block by block above BLOCK elements)."""
    return _fill(out, generator, lambda t, g: t.uniform_(0.0, 1.0, generator=g))


def randn(shape, generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
          device=None) -> torch.Tensor:
    """A new tensor ~ N(0, 1) of `shape` (like `torch.randn`)."""
    return normal_(torch.empty(shape, dtype=dtype, device=device), generator=generator)


def rand(shape, generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
         device=None) -> torch.Tensor:
    """A new tensor ~ U[0, 1) of `shape` (like `torch.rand`)."""
    return uniform_(torch.empty(shape, dtype=dtype, device=device), generator=generator)
