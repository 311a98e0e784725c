"""Writing files safely, and reading the tool's own files back, in one place.

- :func:`write_atomic`: every file the package writes whole (masks, overlays, ``run.json``,
  ``summary.json``, ``metrics.json``, ``maps.npz``, ``heads.pt``, feature caches) goes through
  it. The data is written to a temporary name beside the target, unique to the process and the
  call (``.NAME.PID.RANDOM.tmp``), then renamed onto it: a reader sees the old file or the new
  one, never a part; two processes writing the same file never share a temporary file; the
  temporary file is removed when the write or the rename fails.
- :func:`replace_folder`: a folder written whole (``convert``'s YOLO / VOC folders, a
  calibrated bundle): built beside its target, then swapped in.
- :func:`make_dirs`: output folders, an :class:`~lcar_deploy.errors.OutputError` when one
  cannot be made.
- :class:`JsonlWriter`: ``predictions.jsonl``, one record per line, appended; a line is written
  whole or taken back off; never through a link.
- :func:`claim_folder` / :func:`check_folder`: the one rule for every output folder. A command
  writes only into a folder that is new, empty, or its own: marked by :data:`MARK`, a file it
  wrote there, for the same kind of output. A folder replaced whole (:func:`replace_folder`)
  must also hold nothing but the files its mark lists: what the tool did not write is never
  deleted.
- :func:`open_regular`, :func:`read_regular`, :func:`parse_json`: the tool's own files read
  back (``predictions.jsonl``, ``run.json``, a folder's mark): regular files only (a FIFO is
  refused, never waited on), links refused where asked, JSON that Python cannot hold (too deep,
  too many digits, ``NaN``) refused with a short reason.
- :func:`json_text`: every JSON the tool writes; a non-finite number is an error, never ``NaN``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import OutputError, printable

_NAME_MAX = 255

MARK = ".lcar-deploy"
"""The file that marks a folder as an output of lcar-deploy: JSON ``{"kind": ..., "files":
[...]}`` (``files``: for a folder written whole, every file in it, relative)."""
MAX_MARK_BYTES = 16 << 20
MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects the tool reads in its own JSON files (they nest a few
levels); deeper is refused before Python's recursion limit is near."""

_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def make_dirs(*folders: Path) -> None:
    """Create ``folders`` (and their parents); :class:`OutputError` naming the one that cannot
    be made and why."""
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"{exc.filename or folder}: cannot create the output folder ({exc.strerror})"
            ) from None


def _kind_of(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def open_regular(path: Path, flags: int = os.O_RDONLY, *, follow: bool = True) -> int:
    """``os.open(path, flags)`` for a regular file only, without waiting on a FIFO; with
    ``follow=False`` a link at ``path`` is refused (``O_NOFOLLOW``), and so is a file with
    other hard links when writing. An OSError naming ``path`` says why (its ``strerror``)."""
    extra = os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags | extra, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow and os.path.islink(path):
            raise OSError(
                errno.ELOOP, "is a link (lcar-deploy writes no file through a link)", str(path)
            ) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, f"not a regular file ({_kind_of(info.st_mode)})", str(path))
        if not follow and flags & (os.O_WRONLY | os.O_RDWR) and info.st_nlink > 1:
            raise OSError(
                errno.EMLINK, "has other hard links (writing would change them too)", str(path)
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path, *, follow: bool = True, limit: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (:func:`open_regular`); an OSError when it is
    something else, or larger than ``limit`` bytes."""
    fd = open_regular(path, follow=follow)
    with os.fdopen(fd, "rb") as f:
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _depth_at_most(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return True


def parse_json(text: str | bytes, depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads(text)``, or a ValueError whose message is a short reason (``not JSON
    (...)``, ``nested deeper than 64``, an integer of too many digits, ``NaN``), never a
    RecursionError."""
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError(f"not JSON Python can read (nested deeper than {depth})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at character {exc.pos})") from None
    except ValueError as exc:  # too many digits, NaN, bytes that are not UTF-8
        raise ValueError(f"not JSON Python can read ({printable(exc, 120)})") from None
    if not _depth_at_most(value, depth):
        raise ValueError(f"not JSON Python can read (nested deeper than {depth})")
    return value


def json_text(value: Any, **options: Any) -> str:
    """``json.dumps(value, **options)`` refusing NaN and infinities (a ValueError naming the
    problem): what the tool writes is always valid JSON."""
    try:
        return json.dumps(value, allow_nan=False, **options)
    except ValueError as exc:
        raise ValueError(f"a number that is not finite cannot be written as JSON ({exc})") from None


def folder_mark(folder: Path) -> dict[str, Any] | None:
    """The mark of ``folder`` (:data:`MARK`) as a dict with a str ``kind``; None when it has
    none or one that is not the tool's (a link, not a regular file, not such JSON)."""
    try:
        mark = parse_json(read_regular(folder / MARK, follow=False, limit=MAX_MARK_BYTES))
    except (OSError, ValueError):
        return None
    if not isinstance(mark, dict) or not isinstance(mark.get("kind"), str):
        return None
    return mark


def _refusal(folder: Path, reason: str, option: str) -> OutputError:
    return OutputError(f"{printable(folder)}: {reason}; choose another {option}")


def check_folder(
    folder: Path,
    kind: str,
    option: str = "--out",
    *,
    whole: bool = False,
    legacy: Callable[[Path], bool] | None = None,
) -> bool:
    """Whether ``folder`` is already a ``kind`` output of the tool; :class:`OutputError`
    unless it is absent, an empty folder or that. ``whole``: the folder is replaced whole, so
    every file in it must be one its mark lists. ``legacy``: recognises a ``kind`` folder
    written before marks existed. A link is refused (as is a link that leads nowhere)."""
    folder = Path(folder)
    try:
        info = folder.lstat()
    except (FileNotFoundError, NotADirectoryError):  # to be made: make_dirs says why not
        return False
    except OSError as exc:
        raise _refusal(folder, f"cannot be used ({exc.strerror or exc})", option) from None
    if stat.S_ISLNK(info.st_mode):
        if not folder.is_dir():
            raise _refusal(folder, "is a link that leads to no folder (broken, or a loop)", option)
        if whole:
            raise _refusal(folder, "is a link (a folder replaced whole is never a link)", option)
        info = folder.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise _refusal(folder, f"exists and is not a folder ({_kind_of(info.st_mode)})", option)
    try:
        entries = sorted(os.listdir(folder))
    except OSError as exc:
        raise _refusal(folder, f"cannot be read ({exc.strerror or exc})", option) from None
    if not entries:
        return False
    mark = folder_mark(folder)
    if mark is None:
        if legacy is not None and legacy(folder):
            return True
        raise _refusal(
            folder,
            f"exists and is not an empty folder nor a {kind} output of lcar-deploy (it holds "
            f"{printable(entries[0], 60)}{' and more' if len(entries) > 1 else ''}); nothing "
            "was written",
            option,
        )
    if mark["kind"] != kind:
        raise _refusal(
            folder,
            f"is a {printable(mark['kind'], 40)} output of lcar-deploy, not a {kind} one",
            option,
        )
    if whole:
        listed = mark.get("files")
        known = set(listed) if isinstance(listed, list) else set()
        stray = next((p for p in _files_under(folder) if p not in known), None)
        if stray is not None:
            raise _refusal(
                folder,
                f"holds {printable(stray, 80)}, which lcar-deploy did not write (replacing the "
                "folder would delete it)",
                option,
            )
    return True


def _files_under(folder: Path) -> list[str]:
    """Every entry under ``folder`` that is not a folder (links included, not followed),
    relative, except the mark."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        base = Path(dirpath).relative_to(folder)
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in [*filenames, *links]:
            rel = (base / name).as_posix()
            if rel != MARK:
                found.append(rel)
    return sorted(found)


def write_mark(folder: Path, kind: str, files: list[str] | None = None) -> None:
    """Mark ``folder`` as a ``kind`` output (``files``: what it holds, for a folder written
    whole)."""
    mark: dict[str, Any] = {"kind": kind, "tool": "lcar-deploy"}
    if files is not None:
        mark["files"] = files
    text = json_text(mark, indent=1)
    write_atomic(folder / MARK, lambda tmp: tmp.write_text(text))


def claim_folder(
    folder: Path,
    kind: str,
    option: str = "--out",
    *,
    legacy: Callable[[Path], bool] | None = None,
) -> None:
    """Make ``folder`` a ``kind`` output: created (with its parents) when absent, marked when
    new or empty; :class:`OutputError` when it is another's (:func:`check_folder`) or cannot be
    made."""
    if check_folder(folder, kind, option, legacy=legacy) and folder_mark(folder) is not None:
        return
    make_dirs(folder)
    try:
        write_mark(folder, kind)
    except OSError as exc:
        raise OutputError(
            f"{printable(exc.filename or folder)}: cannot write to the output folder "
            f"({exc.strerror or exc})"
        ) from None


def make_subdirs(base: Path, rel: str) -> Path:
    """``base / rel``, its folders created one by one, each checked to be a real folder
    inside ``base`` (a link placed there is refused: OSError ELOOP); returns it."""
    folder = base
    for part in Path(rel).parts:
        if part in ("", ".", "..") or os.sep in part:
            raise OSError(errno.EINVAL, "not a plain relative folder", str(base / rel))
        folder = folder / part
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
        if folder.is_symlink() or not folder.is_dir():
            raise OSError(
                errno.ELOOP,
                "is a link or not a folder (nothing is written through it)",
                str(folder),
            )
    return folder


def _temp_path(path: Path) -> Path:
    """``.NAME.PID.RANDOM.tmp`` beside ``path``: unique to this process and call, shortened to
    fit the file-name limit."""
    suffix = f".{os.getpid()}.{secrets.token_hex(4)}.tmp".encode()
    name = os.fsencode(path.name)[: _NAME_MAX - 1 - len(suffix)]
    return path.with_name(os.fsdecode(b"." + name + suffix))


def write_atomic(path: Path, save: Callable[[Path], object]) -> None:
    """Call ``save(tmp_path)`` then rename onto ``path``; the temporary file is removed when
    either fails. An OSError is raised naming ``path``.

    ``save`` must write to the path it is given, as given: ``np.savez`` adds ``.npz`` to a name
    without it, so give it an open file instead.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_path(path)
        try:
            save(tmp)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    except OSError as exc:
        if exc.errno is None or exc.filename == str(path):
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


def replace_folder(
    target: Path, build: Callable[[Path], None], kind: str, option: str = "--out"
) -> None:
    """Build a folder with ``build(tmp)`` beside ``target``, mark it as a ``kind`` output
    listing its files, and swap it in: ``target`` holds the old folder or the new one, never a
    part; the temporary folder goes when ``build`` fails. ``target`` must be absent, empty, or
    a ``kind`` output holding only what the tool wrote (:func:`check_folder`, checked before
    the build and again before the swap), so that nothing else is ever deleted."""
    check_folder(target, kind, option, whole=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    old = tmp.with_suffix(".old")
    try:
        tmp.rmdir()
        build(tmp)
        write_mark(tmp, kind, _files_under(tmp))
        check_folder(target, kind, option, whole=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


class JsonlWriter:
    """Appends one JSON line per record; a line is written whole or not at all (see
    :meth:`write`); ``lines`` counts those written. One writer per file: the output lock sees
    to that. The file is a regular file of its own, never a link (:func:`open_regular`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0
        self._fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, follow=False)

    def write(self, record: dict) -> None:
        """Append ``record``'s line (normally in one ``write`` call). When the line cannot be
        written whole (a full disk writes part of it, then fails; an interrupt comes between
        two calls), the part written is truncated back off and the error raised. A record with
        a non-finite number is a ValueError, and nothing is written."""
        data = memoryview((json_text(record, ensure_ascii=True) + "\n").encode("ascii"))
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            while data:
                written = os.write(self._fd, data)
                if written <= 0:
                    raise OSError(errno.EIO, "write() wrote nothing", str(self.path))
                data = data[written:]
        except BaseException:
            if data:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)
            else:  # interrupted once the line was whole: it stays, and counts
                self.lines += 1
            raise
        self.lines += 1

    def close(self) -> None:
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
