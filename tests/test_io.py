"""lcar_deploy/io.py: atomic writes and JSON lines (what is left on disk when a write fails),
the output folder rule (new, empty or the tool's own; nothing it did not write deleted), the
safe readers of the tool's own files (FIFOs, links, hostile JSON)."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from lcar_deploy.errors import OutputError
from lcar_deploy.io import (
    MARK,
    JsonlWriter,
    _temp_path,
    check_folder,
    claim_folder,
    json_text,
    make_subdirs,
    parse_json,
    read_regular,
    replace_folder,
    write_atomic,
)
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


def test_jsonl_writer_refuses_non_finite_numbers_and_links(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    writer = JsonlWriter(path)
    with pytest.raises(ValueError, match="not finite"):
        writer.write({"path": "a.jpg", "score": float("nan")})
    writer.write({"path": "b.jpg", "score": None})
    writer.close()
    assert read_lines(path) == [{"path": "b.jpg", "score": None}]  # no bare NaN in the file
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    link = tmp_path / "linked.jsonl"
    link.symlink_to(victim)
    with pytest.raises(OSError, match="is a link"):
        JsonlWriter(link)
    (tmp_path / "hard.jsonl").hardlink_to(victim)
    with pytest.raises(OSError, match="other hard links"):
        JsonlWriter(tmp_path / "hard.jsonl")
    assert victim.read_text() == "keep"


# ------------------------------------------------------------------------------- safe readers


def test_open_regular_refuses_a_fifo_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "predictions.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match=r"not a regular file \(a FIFO\)"):
        read_regular(fifo)  # a plain open() would wait for a writer forever
    with pytest.raises(OSError, match=r"not a regular file \(a folder\)"):
        read_regular(tmp_path)
    link = tmp_path / "run.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_text("{}")
    assert read_regular(link) == b"{}"
    with pytest.raises(OSError, match="is a link"):
        read_regular(link, follow=False)
    with pytest.raises(OSError, match="larger than 1 bytes"):
        read_regular(tmp_path / "elsewhere.json", limit=1)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested deeper than 64"),
        ("[" * 70 + "]" * 70, "nested deeper than 64"),
        ('{"box": [' + "9" * 5000 + "]}", "Exceeds the limit"),
        ('{"score": NaN}', "NaN is not a number JSON allows"),
        ('{"score": -Infinity}', "-Infinity is not a number"),
        ('{"path": "a.jpg"', "not JSON"),
        (b'{"path": "\xff"}', "not JSON"),
    ],
)
def test_parse_json_gives_a_short_reason_for_what_python_cannot_hold(
    text: str | bytes, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        parse_json(text)
    assert len(str(info.value)) < 200
    assert parse_json('{"box": [' + "9" * 400 + "]}")["box"][0] == int("9" * 400)


def test_json_text_never_writes_nan() -> None:
    assert json_text({"a": [1.5, None]}) == '{"a": [1.5, null]}'
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="not finite"):
            json_text({"score": bad})


# ------------------------------------------------------------------------------ output folders


def test_an_output_folder_is_new_empty_or_its_own(tmp_path: Path) -> None:
    assert check_folder(tmp_path / "new", "localize") is False
    (tmp_path / "empty").mkdir()
    assert check_folder(tmp_path / "empty", "localize") is False
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "cat.jpg").write_bytes(b"the user's")
    with pytest.raises(OutputError, match=r"photos: exists and is not an empty folder nor a lo"):
        claim_folder(mine, "localize")
    assert sorted(p.name for p in mine.iterdir()) == ["cat.jpg"]  # nothing written
    claim_folder(tmp_path / "run", "localize")
    assert check_folder(tmp_path / "run", "localize") is True
    with pytest.raises(
        OutputError, match="is a localize output of lcar-deploy, not a convert-yolo"
    ):
        check_folder(tmp_path / "run", "convert-yolo")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        check_folder(mine / "cat.jpg", "localize")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(OutputError, match="loop: is a link that leads to no folder"):
        claim_folder(loop, "localize")
    with pytest.raises(OutputError, match="/proc/self: exists and is not an empty folder"):
        claim_folder(Path("/proc/self"), "localize")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "predictions.jsonl").write_text("{}\n")
    claim_folder(legacy, "localize", legacy=lambda folder: True)
    assert check_folder(legacy, "localize") is True


def test_a_folder_replaced_whole_must_hold_only_what_it_wrote(tmp_path: Path) -> None:
    target = tmp_path / "yolo"

    def build(files: dict[str, str]) -> Callable[[Path], None]:
        def write(tmp: Path) -> None:
            for name, text in files.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_text(text)

        return write

    replace_folder(target, build({"labels/a.txt": "1", "data.yaml": "x"}), "convert-yolo")
    replace_folder(target, build({"labels/b.txt": "2"}), "convert-yolo")
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        MARK,
        "labels",
        "labels/b.txt",
    ]
    (target / "labels" / "notes.txt").write_text("the user's")
    with pytest.raises(OutputError, match=r"holds labels/notes.txt, which lcar-deploy did not"):
        replace_folder(target, build({"labels/c.txt": "3"}), "convert-yolo")
    assert (target / "labels" / "notes.txt").read_text() == "the user's"
    users = tmp_path / "data"
    users.mkdir()
    (users / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="data: exists and is not an empty folder"):
        replace_folder(users, build({"a": "b"}), "convert-yolo")
    assert [p.name for p in users.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_make_subdirs_refuses_a_link_on_the_way(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    assert make_subdirs(out, "masks/a/b") == out / "masks" / "a" / "b"
    (out / "overlays").symlink_to(elsewhere)
    with pytest.raises(OSError, match="is a link or not a folder"):
        make_subdirs(out, "overlays/x")
    for climbing in ("../x", "/abs"):
        with pytest.raises(OSError, match="not a plain relative folder"):
            make_subdirs(out, climbing)
    assert list(elsewhere.iterdir()) == []
