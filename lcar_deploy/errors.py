"""The tool's errors: one base class, so that each command catches them in one place.

Every message names the thing at fault (a file, a setting, an option) and the reason.
"""

from __future__ import annotations


class LcarError(Exception):
    """Base of every error lcar-deploy reports to its user (exit code 1 on the command line)."""


class SettingError(LcarError, ValueError):
    """A setting with a bad value: ``name`` (dotted within tables) and ``reason``."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"setting {name}: {reason}")
        self.name = name
        self.reason = reason

    def within(self, table: str) -> SettingError:
        """The same error for the setting inside the table ``table``."""
        return SettingError(f"{table}.{self.name}", self.reason)


class BundleError(LcarError, ValueError):
    """A bundle that is missing, incomplete, tampered with, hostile or from a newer format."""


class DatasetError(LcarError, ValueError):
    """A dataset folder or metadata file that cannot be read; the message gives file:line."""


class ImageError(LcarError, ValueError):
    """An image that cannot be used; the message names the file and the reason."""


class WeightsError(LcarError, ValueError):
    """A backbone weights file or package that is missing or does not fit the backbone."""


class HeadsError(LcarError, ValueError):
    """A heads file that is missing, malformed or made for another backbone."""


class OutputError(LcarError, RuntimeError):
    """The output folder cannot be used: held by another run, unwritable, full, or holding
    another run's results. The message names the file and says what to do."""


class EngineError(LcarError, RuntimeError):
    """An engine that cannot run (e.g. Ray missing); the message says what to do."""


class LabelsError(LcarError, ValueError):
    """Known image classes (``localize --labels``) that do not fit the bundle: a class it does
    not have, or a bundle without classes."""


class ConvertError(LcarError, ValueError):
    """A ``predictions.jsonl`` that cannot be converted: the message names the file, the line
    and the reason."""


class ReviewError(LcarError, ValueError):
    """A run folder ``lcar-deploy review`` cannot make a page of: not a ``localize`` run, a
    ``predictions.jsonl`` line that is not a prediction record, or a ``review.html`` that is not
    ours. The message names the file (and line) and the reason."""


class QuantizationError(LcarError, ValueError):
    """An int8 export that cannot be made: a calibration folder that is missing or holds no
    decodable image, or a format that has no ONNX graph to quantize."""


MAX_SHOWN = 200
"""Characters of a user's value (a path, a line, a name) shown in a message at most."""


def printable(value: object, limit: int = MAX_SHOWN) -> str:
    """``value`` as text safe for a terminal or a log: control characters (newlines, escape
    sequences) and lone surrogates escaped as ``\\n``, ``\\x1b``, ``\\udcff``; longer than
    ``limit`` characters cut in the middle with ``...``."""
    text = str(value)
    escaped = "".join(
        c
        if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF
        else c.encode("unicode_escape", "backslashreplace").decode("ascii")
        for c in text
    )
    if len(escaped) > limit:
        half = (limit - 3) // 2
        escaped = f"{escaped[:half]}...{escaped[-half:]}"
    return escaped
