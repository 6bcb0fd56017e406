"""Writing output files atomically: a file is either absent, as it was, or complete.

Every output (containers, reports, weights, exported folders) goes to a temporary name in the same
folder and is renamed into place once complete, with the mode a plain ``open()`` would give it
(``0666`` less the umask), so no failure or interruption leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from squeezetune.errors import SqueezeError


def _umask_mode(base: int) -> int:
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then move it onto ``path``.

    The folder must exist. Any failure (a full disk, an interruption) leaves ``path`` as it was and
    no temporary file behind; an ``OSError`` becomes a one-line :class:`SqueezeError`.
    """
    target = Path(path)
    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise SqueezeError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str], *, replace: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; it becomes ``path`` when the block succeeds.

    ``path`` must be new or an empty folder, unless ``replace``: then a folder already there is
    swapped out in the same step and removed. On any exception the temporary folder goes and
    ``path`` is as it was. The folder and its files get the modes a plain ``mkdir``/``open`` would.
    """
    target = Path(path)
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not replace)):
        raise SqueezeError(f"{str(target)!r} exists and is not an empty folder: expected a new folder")
    try:
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    except OSError as exc:
        raise SqueezeError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from None
    try:
        yield staging
        os.chmod(staging, _umask_mode(0o777))
        for file in staging.iterdir():
            os.chmod(file, _umask_mode(0o666))
        _swap_in(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, target: Path) -> None:
    old = None
    if target.is_dir() and any(target.iterdir()):
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.replace(target, old / target.name)
    elif target.is_dir():
        target.rmdir()
    try:
        os.replace(staging, target)
    except OSError:
        if old is not None:
            os.replace(old / target.name, target)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
