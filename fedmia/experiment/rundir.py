"""The run directory: every file is written atomically (temp file + rename), nothing half-written."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def _json_safe(obj: Any) -> Any:
    """JSON has no inf/NaN: write them as null (an infinite epsilon is 'no guarantee')."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _json_safe(obj.item())
    return obj


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def _atomic(self, name: str, write: Callable[[Path], object]) -> Path:
        final = self.path / name
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{final.suffix}", dir=final.parent)
        os.close(fd)
        try:
            write(Path(tmp))
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should read like any file
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return final

    def write_text(self, name: str, text: str) -> Path:
        return self._atomic(name, lambda p: p.write_text(text))

    def write_json(self, name: str, obj: Any) -> Path:
        return self.write_text(name, json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n")

    def mark_failed(self, exc: BaseException, resume_hint: str) -> None:
        """Say in the run directory that the run failed, why, and how to resume (best effort: the
        original error matters more than a second one while writing this)."""
        with contextlib.suppress(OSError):
            error = f"{type(exc).__name__}: {exc}"
            when = time.strftime("%Y-%m-%dT%H:%M:%S")
            self.write_json("FAILED.json", {"error": error, "resume": resume_hint, "time": when})

    def clear_failed(self) -> None:
        (self.path / "FAILED.json").unlink(missing_ok=True)

    def write_with(self, name: str, writer: Callable[[Path], object]) -> Path:
        """Let ``writer`` (e.g. a DataFrame's to_parquet or a figure's savefig) fill a temp path."""
        return self._atomic(name, writer)
