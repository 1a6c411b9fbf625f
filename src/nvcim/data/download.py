"""Finding a data set's files under the data root, and downloading the missing ones.

``root`` defaults to ``$NVCIM_DATA`` or ``~/.cache/nvcim/data``; data set ``name`` lives in
``<root>/<name>/``. Missing files are downloaded (urllib, MD5-verified, atomic) when allowed and a
network is there; otherwise :class:`DatasetNotFoundError` says in one line which files to put where
(a failed download leaves no empty folder behind). Archives are extracted in a temporary folder
(member paths checked) and moved into place whole.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nvcim.data.registry import REGISTRY, DatasetNotFoundError


def default_root() -> Path:
    """``$NVCIM_DATA`` if set, else ``~/.cache/nvcim/data``."""
    env = os.environ.get("NVCIM_DATA")
    return Path(env).expanduser() if env else Path("~/.cache/nvcim/data").expanduser()


@dataclass(frozen=True)
class ArchiveFolder:
    """Locator: the folder ``folder`` that the downloaded ``archive`` extracts to, in ``<root>/<name>/`` or
    directly under the root, holding every path of ``required`` (so that a partial copy fails here with a
    message naming what is missing, not deep in a reader); finds the folder."""

    folder: str
    archive: str
    required: tuple[str, ...]
    cache_suffix: str | None = None  # a file `<folder><suffix>` beside the folder that holds its decoded contents
    # (Tiny ImageNet's .npz): with it there, the folder counts as found whatever it still holds (images deleted)

    @property
    def what(self) -> str:
        return f"{self.folder}/ (from {self.archive})"

    def find(self, name: str, root: Path) -> Path | None:
        incomplete = None
        for d in (root / name / self.folder, root / self.folder):
            if self.cache_suffix and (d.parent / (d.name + self.cache_suffix)).is_file():
                return d  # the reader checks the cache, and says so when it cannot stand in for the files
            if d.is_dir():
                missing = [f for f in self.required if not (d / f).exists()]
                if not missing:
                    return d
                incomplete = incomplete or (d, missing)
        if incomplete:  # only partial copies: say what is missing rather than fail deep in a reader
            d, missing = incomplete
            raise DatasetNotFoundError(
                f"{name}: {d} is incomplete (no {', '.join(missing)}); replace it with the complete "
                f"{self.what}, or delete it to download it again"
            )
        return None


def _fetch(url: str, dest: Path) -> None:
    """Copy ``url`` (http(s) or file://) into the file ``dest``."""
    with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f, length=1 << 20)


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, md5: str, dest: Path) -> None:
    """Fetch into a temp file next to ``dest``, verify the MD5, then rename onto ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"nvcim: downloading {url}", file=sys.stderr)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix="." + dest.name, suffix=".part")
    os.close(fd)
    try:
        _fetch(url, Path(tmp))
        got = _md5(Path(tmp))
        if got != md5:
            raise OSError(f"MD5 mismatch for {dest.name}: got {got}, expected {md5}")
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _extract(archive: Path, folder_name: str, target_dir: Path) -> None:
    """Extract ``archive`` in a temp folder, then move its ``folder_name`` to ``target_dir``."""
    tmpdir = Path(tempfile.mkdtemp(dir=target_dir, prefix=".extract-"))
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                for member in z.namelist():
                    p = Path(member)
                    if p.is_absolute() or ".." in p.parts:
                        raise OSError(f"{archive.name}: unsafe member path {member!r}")
                z.extractall(tmpdir)
        else:
            with tarfile.open(archive, "r:*") as t:
                if hasattr(tarfile, "data_filter"):
                    t.extractall(tmpdir, filter="data")
                else:  # Python < 3.10.12 / 3.11.4: check member paths and types ourselves
                    for m in t.getmembers():
                        p = Path(m.name)
                        if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                            raise OSError(f"{archive.name}: unsafe member {m.name!r}")
                    t.extractall(tmpdir)
        src = tmpdir / folder_name
        if not src.is_dir():
            raise OSError(f"{archive.name} does not contain {folder_name}/")
        os.replace(src, target_dir / folder_name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _try_download(name: str, target_dir: Path) -> None:
    """Download (and extract) ``name`` into ``target_dir``; raises OSError on any failure, after removing
    the folders it created that are still empty (a failed download leaves no empty folder behind)."""
    created = []  # target_dir and its missing parents, deepest first
    for d in (target_dir, *target_dir.parents):
        if d.exists():
            break
        created.append(d)
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        entry = REGISTRY[name]
        have = {fname for _, _, fname in entry.downloads if (target_dir / fname).exists()}
        other = [fname for _, md5, fname in entry.downloads if fname in have and _md5(target_dir / fname) != md5]
        if other:  # the user's own file of that name (nvcim's downloads are renamed into place only once verified)
            missing = ", ".join(fname for _, _, fname in entry.downloads if fname not in have)
            lacks = f", and lacks {missing}" if missing else ""
            raise OSError(f"{target_dir} holds {', '.join(other)}, not the official file(s) (MD5 differs), which a "
                          f"download would replace{lacks}: complete the folder with your own files, or move yours "
                          "away to download the official ones")
        fetched = set()
        for url, md5, fname in entry.downloads:
            if fname not in have:
                _download(url, md5, target_dir / fname)
                fetched.add(fname)
        if isinstance(entry.locate, ArchiveFolder):
            archive = entry.downloads[0][2]
            _extract(target_dir / archive, entry.locate.folder, target_dir)
            if archive in fetched:  # nvcim's download, extracted: a copy the user put there is kept
                (target_dir / archive).unlink(missing_ok=True)
    except BaseException:
        for d in created:
            try:
                d.rmdir()  # only when empty: a file downloaded before the failure stays for the next try
            except OSError:
                break
        raise


def _not_found(name: str, what: str, where: Path, reason: str | None) -> DatasetNotFoundError:
    msg = f"{name}: put {what} under {where}, or rerun with network access"
    if reason:
        msg += f" (download failed: {reason})"
    return DatasetNotFoundError(" ".join(msg.split()))  # one line


def locate(name: str, root: Path, download: bool) -> Any:
    """Find (downloading if allowed) the on-disk files of registered data set ``name``: what its reader takes."""
    entry = REGISTRY[name]
    target = root / name
    found = entry.locate.find(name, root)
    if found is None:
        reason = None
        if download and entry.downloads:
            try:
                _try_download(name, target)
            except (OSError, tarfile.TarError, zipfile.BadZipFile) as e:  # URLError is an OSError
                reason = str(e) or type(e).__name__
            found = entry.locate.find(name, root)
        if found is None:
            raise _not_found(name, entry.locate.what, target, reason)
    return found
