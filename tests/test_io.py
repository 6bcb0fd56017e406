"""Atomic writes: every output file is absent, as it was, or complete."""

from __future__ import annotations

import os
import stat

import pytest

from squeezetune import _io
from squeezetune.errors import SqueezeError


def _fail(*args, **kwargs):
    raise OSError(28, "No space left on device")


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_write_into_missing_directory(tmp_path):
    with pytest.raises(SqueezeError, match=r"cannot write '.*model.sqz': No such file or directory"):
        _io.atomic_write_bytes(tmp_path / "no" / "model.sqz", b"data")


@pytest.mark.parametrize(
    "where, failure, raised",
    [
        ("replace", _fail, SqueezeError),
        ("fsync", _fail, SqueezeError),
        ("fsync", _interrupt, KeyboardInterrupt),
        ("open", _fail, SqueezeError),
    ],
)
@pytest.mark.parametrize("existing", [None, b"old contents"])
def test_failed_write_leaves_no_trace(tmp_path, monkeypatch, where, failure, raised, existing):
    path = tmp_path / "model.sqz"
    if existing is not None:
        path.write_bytes(existing)
    if where == "open":  # shadow the builtin inside the module
        monkeypatch.setattr(_io, "open", failure, raising=False)
    else:
        monkeypatch.setattr(_io.os, where, failure)
    with pytest.raises(raised):
        _io.atomic_write_bytes(path, b"new contents")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ([] if existing is None else ["model.sqz"])
    if existing is not None:
        assert path.read_bytes() == existing


def test_failed_write_mid_file_leaves_no_trace(tmp_path, monkeypatch):
    path = tmp_path / "model.sqz"
    path.write_bytes(b"old")

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(_io, "open", lambda file, mode: HalfWriter(open(file, mode)), raising=False)
    with pytest.raises(SqueezeError, match="Input/output error"):
        _io.atomic_write_bytes(path, b"0123456789")
    assert os.listdir(tmp_path) == ["model.sqz"]
    assert path.read_bytes() == b"old"


def test_files_get_the_mode_open_would_give_them(tmp_path):
    old = os.umask(0o022)
    try:
        _io.atomic_write_text(tmp_path / "a.json", "{}")
        plain = tmp_path / "b.json"
        plain.write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644


def test_atomic_folder_appears_whole_or_not_at_all(tmp_path):
    with _io.atomic_folder(tmp_path / "out") as tmp:
        (tmp / "a").write_text("1")
        assert not (tmp_path / "out").exists()
    assert (tmp_path / "out" / "a").read_text() == "1"
    with pytest.raises(RuntimeError):
        with _io.atomic_folder(tmp_path / "other") as tmp:
            (tmp / "a").write_text("1")
            raise RuntimeError("half way")
    assert sorted(os.listdir(tmp_path)) == ["out"]
    with pytest.raises(SqueezeError, match=r"exists and is not an empty folder"):
        with _io.atomic_folder(tmp_path / "out"):
            pass
