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
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; renamed onto ``path`` when the block succeeds.

    ``path`` must not exist or be an empty folder. On any exception the temporary folder goes.
    """
    target = Path(path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise SqueezeError(f"{str(target)!r} exists and is not an empty folder: expected a new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, _umask_mode(0o777))
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
