"""Atomic writes and JSON lines (lcar_deploy/io.py): what is left on disk when a write fails."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from lcar_deploy.io import JsonlWriter, _temp_path, write_atomic
from lcar_deploy.localize import _TEMP_NAME


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------------- write_atomic


def test_write_atomic_writes_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.json"  # the folder is created
    write_atomic(path, lambda tmp: tmp.write_text("first"))
    write_atomic(path, lambda tmp: tmp.write_text("second"))
    assert path.read_text() == "second"
    assert leftovers(path.parent) == []


def test_temp_names_are_unique_hidden_and_found_by_the_cleanup(tmp_path: Path) -> None:
    path = tmp_path / "mask.png"
    names = {_temp_path(path).name for _ in range(100)}
    assert len(names) == 100
    for name in names:
        assert name.startswith(f".mask.png.{os.getpid()}.") and name.endswith(".tmp")
        assert _TEMP_NAME.match(name)  # localize --force removes them
    assert all(_temp_path(path).parent == tmp_path for _ in range(3))
    seen: list[Path] = []
    for _ in range(2):
        write_atomic(path, lambda tmp: seen.append(tmp) or tmp.write_bytes(b"x"))
    assert seen[0] != seen[1]


def test_temp_name_of_a_long_name_fits_the_limit(tmp_path: Path) -> None:
    name = "é" * 127  # 254 bytes in UTF-8
    tmp = _temp_path(tmp_path / name)
    assert len(os.fsencode(tmp.name)) <= 255
    assert tmp.name.startswith(".é") and tmp.name.endswith(".tmp")


def test_failed_save_removes_the_temp_and_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text("old")

    def full_disk(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    with pytest.raises(OSError) as info:
        write_atomic(path, full_disk)
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(path)  # the target, not the temporary name
    assert str(path) in str(info.value)
    assert path.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_other_errors_pass_through_and_remove_the_temp(tmp_path: Path) -> None:
    path = tmp_path / "heads.pt"

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise ValueError("cannot serialise")

    with pytest.raises(ValueError, match="cannot serialise"):
        write_atomic(path, broken)
    assert not path.exists()
    assert leftovers(tmp_path) == []


def test_failed_rename_removes_the_temp(tmp_path: Path) -> None:
    path = tmp_path / "taken"
    path.mkdir()
    (path / "inside").write_text("x")  # a non-empty folder where the file goes
    with pytest.raises(OSError) as info:
        write_atomic(path, lambda tmp: tmp.write_text("data"))
    assert info.value.filename == str(path)
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------- JsonlWriter


def read_lines(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


def test_jsonl_writer_appends_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"path": "earlier"}\n')
    writer = JsonlWriter(path)
    writer.write({"path": "a.jpg", "box": [1, 2, 3, 4]})
    writer.write({"path": "ü.jpg"})  # ASCII on disk
    writer.close()
    assert writer.lines == 2
    assert read_lines(path) == [
        {"path": "earlier"},
        {"path": "a.jpg", "box": [1, 2, 3, 4]},
        {"path": "ü.jpg"},
    ]
    assert path.read_bytes().isascii()


@pytest.mark.parametrize("failure", ["full disk", "interrupt", "nothing written"])
def test_jsonl_writer_takes_a_partial_line_back(
    failure: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second line is cut short (part of it written, then an error): the file ends with the
    first line again, and the error reaches the caller."""
    path = tmp_path / "predictions.jsonl"
    writer = JsonlWriter(path)
    writer.write({"path": "a.jpg"})
    real_write = os.write
    calls = {"to_the_file": 0}

    def short_write(fd: int, data: bytes) -> int:
        """Half the line, then half the rest and the failure."""
        if fd != writer._fd:
            return real_write(fd, data)
        if failure == "nothing written":
            return 0
        written = real_write(fd, bytes(data[: len(data) // 2]))
        calls["to_the_file"] += 1
        if calls["to_the_file"] == 2:
            raise KeyboardInterrupt if failure == "interrupt" else OSError(errno.ENOSPC, "full")
        return written

    monkeypatch.setattr(os, "write", short_write)
    expected = KeyboardInterrupt if failure == "interrupt" else OSError
    with pytest.raises(expected) as info:
        writer.write({"path": "b.jpg", "padding": "x" * 100})
    monkeypatch.undo()
    if failure == "nothing written":
        assert info.value.errno == errno.EIO and info.value.filename == str(path)
    assert writer.lines == 1
    assert path.read_bytes() == b'{"path": "a.jpg"}\n'
    writer.write({"path": "c.jpg"})  # the file goes on from the last whole line
    writer.close()
    assert read_lines(path) == [{"path": "a.jpg"}, {"path": "c.jpg"}]
    assert writer.lines == 2
