"""Reading weight and heads files without running pickle code, with errors naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def load_file(path: Path, error: type[ValueError], what: str) -> Any:
    """Contents of a ``.safetensors`` or torch file (``weights_only=True``).

    Raises ``error`` naming ``path`` when it is missing or unreadable; only the first line of
    the underlying message is kept (torch's advice to retry unsafely is not for untrusted files).
    """
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file as load_safetensors

            return load_safetensors(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise error(f"{path}: cannot read {what} ({type(exc).__name__}: {first_line})") from exc
