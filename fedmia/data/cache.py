"""An on-disk cache of parsed datasets, shared by every process on the machine.

A file-based loader wrapped with ``parse_cache`` parses its files once; its ``Dataset`` is written as
``.npy`` files, one an array (``x``, ``y``, ``groups``), and a ``meta.json`` (the other fields and the key),
and later loads, in any process, map those files copy-on-write (``np.load(..., mmap_mode="c")``): no
parse, and the pages are shared between processes (a federation's Ray actors and its driver) through the
page cache. The arrays are writable; a write changes the process's own copy of that page, never the file.

The key is the loader, its parameters and every source file's resolved path, size and mtime (ns), so an
edited, replaced, added or removed file is parsed again; a file modified in the last ``RACY_SECONDS`` is
parsed but not stored. Where the cache lives: ``$FEDMIA_CACHE_DIR``, else ``$XDG_CACHE_HOME/fedmia/datasets``,
else ``~/.cache/fedmia/datasets``; ``FEDMIA_CACHE_DIR=off`` turns it off. Deleting the folder is always
safe, and the only way to reclaim its space: fedmia never removes a stale entry.

The cache never makes a load fail: a folder that cannot be created or written, a truncated or corrupt
entry, or a source file that cannot be listed or stat'ed leaves the loader to parse as it would without a
cache (a corrupt entry is replaced). An entry is written into a temporary folder beside it and renamed
into place, so a process never sees a half-written entry; of two processes parsing at once, the second
to rename uses the first's entry.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedmia.data.datasets import Dataset

log = logging.getLogger(__name__)

CACHE_ENV = "FEDMIA_CACHE_DIR"
# Part of every key: bump it when the entry layout or a loader's output changes, so old entries are not read.
FORMAT_VERSION = 1
# A source file modified this recently is not cached: file systems stamp mtimes with a coarse clock (a few
# ms), so a same-size rewrite within one tick would keep the key (git's "racily clean" files, the same issue).
RACY_SECONDS = 2.0

_META = "meta.json"
_SCALARS = (str, int, float, bool, type(None))


def cache_dir() -> Path | None:
    """The folder of cached datasets, or None when ``FEDMIA_CACHE_DIR=off`` (or no home folder is known)."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() == "off":
        return None
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg and Path(xdg).is_absolute():  # the XDG spec: a relative value is to be ignored
        return Path(xdg) / "fedmia" / "datasets"
    try:
        return Path.home() / ".cache" / "fedmia" / "datasets"
    except RuntimeError:  # no HOME and no passwd entry
        return None


def _fingerprint(loader: str, params: dict[str, Any], files: Sequence[Path]) -> tuple[dict[str, Any], bool]:
    """(the key, whether a file is too recent to cache). Raises OSError for a file that cannot be stat'ed."""
    now = time.time_ns()
    stats = []
    racy = False
    for f in files:
        path = Path(f).resolve()
        st = path.stat()
        stats.append([str(path), st.st_size, st.st_mtime_ns])
        racy = racy or abs(now - st.st_mtime_ns) < RACY_SECONDS * 1e9
    key = {"version": FORMAT_VERSION, "loader": loader, "params": params, "files": stats}
    # round-trip through JSON so the key compares equal to the one read back from meta.json
    return json.loads(json.dumps(key, sort_keys=True, default=str)), racy


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _read(entry: Path, key: dict[str, Any]) -> Dataset | None:
    """The Dataset of a complete, intact entry for ``key`` (arrays memory-mapped copy-on-write), else None."""
    if not entry.is_dir():
        return None
    try:
        meta = json.loads((entry / _META).read_text())
        if meta.get("key") != key:
            return None
        spec: dict[str, dict[str, Any]] = meta["fields"]
        if set(spec) != {f.name for f in dataclasses.fields(Dataset)}:
            return None
        values: dict[str, Any] = {}
        for name, s in spec.items():
            if "value" in s:
                values[name] = s["value"]
                continue
            file = entry / f"{name}.npy"
            dtype, shape = np.dtype(s["dtype"]), tuple(s["shape"])
            nbytes = dtype.itemsize * int(np.prod(shape))
            a = np.load(file, mmap_mode="c" if nbytes else None, allow_pickle=False)
            if a.dtype != dtype or a.shape != shape:
                return None
            # a truncated (or padded) file: np.load maps what the header promises, so check the length too
            if nbytes and file.stat().st_size != a.offset + nbytes:
                return None
            values[name] = np.asarray(a)  # a plain ndarray view; it keeps the mapping alive
        return Dataset(**values)
    except Exception as exc:  # whatever a damaged entry raises (OSError, ValueError, KeyError, ...): parse again
        log.debug("dataset cache: unreadable entry %s (%s); parsing the files", entry, exc)
        return None


def _write(entry: Path, key: dict[str, Any], data: Dataset) -> Dataset | None:
    """Store ``data`` as ``entry`` (written beside it, then renamed into place) and read it back; None if the
    cache cannot be written (the caller keeps its parsed arrays)."""
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        spec: dict[str, dict[str, Any]] = {}
        for f in dataclasses.fields(Dataset):
            v = getattr(data, f.name)
            if isinstance(v, np.ndarray):
                np.save(tmp / f"{f.name}.npy", v, allow_pickle=False)
                spec[f.name] = {"dtype": v.dtype.str, "shape": list(v.shape)}
            elif isinstance(v, _SCALARS) and not isinstance(v, np.generic):
                spec[f.name] = {"value": v}
            else:
                raise TypeError(f"field {f.name!r} of type {type(v).__name__} cannot be cached")
        (tmp / _META).write_text(json.dumps({"key": key, "fields": spec}, sort_keys=True))  # last: marks it whole
        return _publish(tmp, entry, key)
    except Exception as exc:  # a read-only or full disk, an odd field: never fail the load for the cache
        log.debug("dataset cache: cannot write %s (%s); using the parsed arrays", entry, exc)
        shutil.rmtree(tmp, ignore_errors=True)
        return None


def _publish(tmp: Path, entry: Path, key: dict[str, Any]) -> Dataset | None:
    """Rename the written folder ``tmp`` to ``entry`` and read it back. An entry already there is another
    process's (used as it is) or a damaged one (moved aside and replaced)."""
    try:
        os.rename(tmp, entry)  # atomic; fails when ``entry`` exists and is not empty
    except OSError:
        winner = _read(entry, key)
        if winner is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return winner
        trash = tmp.with_suffix(".old")
        try:
            os.rename(entry, trash)
            os.rename(tmp, entry)
        except OSError as exc:
            log.debug("dataset cache: cannot replace %s (%s)", entry, exc)
            shutil.rmtree(tmp, ignore_errors=True)
            return _read(entry, key)
        finally:
            shutil.rmtree(trash, ignore_errors=True)
    return _read(entry, key)


def parse_cache(
    sources: Callable[..., Sequence[Path]],
) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Decorator: cache the loader's Dataset on disk, keyed by its name, its arguments and its source files.

    ``sources`` takes the loader's arguments and lists the files the loader reads, in the order it reads
    them: the loader's own file-discovery helper. When it raises, lists nothing, or a file cannot be
    stat'ed, the loader runs uncached and reports the problem itself, with its usual message. A file
    modified less than ``RACY_SECONDS`` ago, or during the parse, is parsed but not stored.
    """

    def deco(load: Callable[..., Dataset]) -> Callable[..., Dataset]:
        signature = inspect.signature(load)
        loader = f"{load.__module__}.{load.__qualname__}"

        @functools.wraps(load)
        def cached(*args: Any, **kwargs: Any) -> Dataset:
            folder = cache_dir()
            if folder is None:
                return load(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            params = dict(bound.arguments)
            try:
                files = list(sources(**params))
                if not files:
                    raise FileNotFoundError("no source files")
                key, racy = _fingerprint(loader, params, files)
            except Exception as exc:  # the loader raises its own error for a missing or unreadable file
                log.debug("dataset cache: not used for %s (%s)", load.__name__, exc)
                return load(*args, **kwargs)
            entry = folder / f"{load.__name__}-{_digest(key)}"
            hit = _read(entry, key)
            if hit is not None:
                return hit
            data = load(*args, **kwargs)
            try:
                unchanged = _fingerprint(loader, params, list(sources(**params)))[0] == key
            except Exception:
                unchanged = False
            if racy or not unchanged:
                log.debug("dataset cache: a source file of %s is too recent or changed; not stored", load.__name__)
                return data
            stored = _write(entry, key, data)
            return stored if stored is not None else data

        return cached

    return deco
