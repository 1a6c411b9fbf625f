"""Lock files nvcim puts beside a user's output while a command writes it (`nvcim train --out DIR` holds
DIR.train-state.lock), so that two runs never write one output at once.

    with output_lock(Path("run.train-state.lock"), "nvcim train --out run"):
        ...   # ValueError (one line) if another running process holds it

The lock is an exclusive flock: the OS releases it when the process dies, so a file left by a killed run blocks
nothing. The file holds LOCK_MARK and is removed when the command ends; a file of that name that nvcim did not write
is never changed or removed (a one-line error). Directories created for the lock are removed again if left empty.
Without fcntl (Windows) there is no lock.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

LOCK_MARK = b"nvcim lock: a running nvcim command writes the output next to this file\n"


def _missing_parents(path: Path) -> list[Path]:
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing  # innermost first


@contextlib.contextmanager
def output_lock(path, user: str):
    """Hold the lock file `path` while the block runs; `user` names the output in the error of a second run."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    created = _missing_parents(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ValueError(f"{user} is in use by another running process (it holds {path}): wait for it to "
                             "finish, or choose another output") from None
        try:  # its previous holder may have removed the file between our open and our lock: take the new one
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        content = os.pread(fd, len(LOCK_MARK) + 1, 0)
        if content and content != LOCK_MARK:
            raise ValueError(f"{path} exists and is not nvcim's lock file: move it away (nvcim keeps a lock there "
                             f"while {user} runs)")
        if not content:
            os.write(fd, LOCK_MARK)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # still holding the lock: a waiting run retries on a new file
            for parent in created:
                with contextlib.suppress(OSError):
                    parent.rmdir()  # only if empty
    finally:
        os.close(fd)
