"""Lock files nvcim puts beside a user's output while a command writes it (`nvcim train --out DIR` holds
DIR.train-state.lock), so that two runs never write one output at once.

    with output_lock(Path("run.train-state.lock"), "--out run"):
        ...   # ValueError (one line) if another running process holds it

The lock is an exclusive flock: the OS releases it when the process dies, so a file left by a killed run blocks
nothing (the next run takes it over). nvcim creates the file itself (O_EXCL), writes LOCK_MARK into it and removes it
when the command ends; an existing file of that name is taken over only when it holds exactly LOCK_MARK, and a
symlink is never followed, so a user's file is never changed or removed. Directories created for the lock are removed
again if left empty. Without fcntl (Windows) there is no lock.
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


def _remove_empty(dirs: list[Path]) -> None:
    for d in dirs:
        with contextlib.suppress(OSError):
            d.rmdir()  # only if empty


def _open_locked(path: Path, user: str):
    """(fd holding the flock on the file now at `path`, whether this call created it)."""
    import fcntl

    while True:
        created = True
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            created = False
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
            except FileNotFoundError:  # its holder removed it meanwhile: create it
                continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ValueError(f"{user} is in use by another running process (it holds {path}): wait for it to "
                             "finish, or choose another output") from None
        try:  # its previous holder may have removed the file between our open and our lock: take the new one
            if os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino:
                return fd, created
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def output_lock(path, user: str):
    """Hold the lock file `path` while the block runs; `user` names the output in the error of a second run."""
    try:
        import fcntl  # noqa: F401
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    made = _missing_parents(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, created = _open_locked(path, user)
    except OSError as exc:  # a read-only directory, a parent that is a file, a symlink at `path` (ELOOP)
        _remove_empty(made)
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"cannot create the lock file {path} for {user} ({reason}): choose an output in a directory "
                         "you can write, or move away what is at that path") from None
    try:
        if not created and os.pread(fd, len(LOCK_MARK) + 1, 0) != LOCK_MARK:
            raise ValueError(f"{path} exists and is not nvcim's lock file: move it away (nvcim keeps a lock there "
                             f"while {user} runs)")
        if created:
            os.write(fd, LOCK_MARK)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # still holding the lock: a waiting run retries on a new file
            _remove_empty(made)
    finally:
        os.close(fd)
