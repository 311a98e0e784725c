"""Writing files safely: atomic replacement and append-only JSON lines, in one place.

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
  whole or taken back off.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import OutputError

_NAME_MAX = 255


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


def replace_folder(target: Path, build: Callable[[Path], None]) -> None:
    """Build a folder with ``build(tmp)`` beside ``target`` and swap it in: ``target`` holds
    the old folder or the new one, never a part; the temporary folder goes when ``build``
    fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    old = tmp.with_suffix(".old")
    try:
        tmp.rmdir()
        build(tmp)
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise OutputError(f"{target}: exists and is not a folder")
        if target.exists():
            target.rename(old)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


class JsonlWriter:
    """Appends one JSON line per record; a line is written whole or not at all (see
    :meth:`write`); ``lines`` counts those written. One writer per file: the output lock sees
    to that."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict) -> None:
        """Append ``record``'s line (normally in one ``write`` call). When the line cannot be
        written whole (a full disk writes part of it, then fails; an interrupt comes between
        two calls), the part written is truncated back off and the error raised."""
        data = memoryview((json.dumps(record, ensure_ascii=True) + "\n").encode("ascii"))
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
