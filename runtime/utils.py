"""Small shared helpers: atomic file writes, the progress bar, the cache folder."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: Environment variable that moves the cache (window store, latency tables).
CACHE_ENV = "SLEEPNAS_CACHE"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Return the cache folder: ``override``, else ``$SLEEPNAS_CACHE``, else ``~/.cache/sleepnas``."""
    if override is not None:
        path = Path(override)
    elif os.environ.get(CACHE_ENV):
        path = Path(os.environ[CACHE_ENV])
    else:
        path = Path.home() / ".cache" / "sleepnas"
    return path.expanduser()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so a reader sees the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file with mode 0600; give it the mode a plain open() would.
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def progress_enabled() -> bool:
    """Return whether progress bars are shown: off with ``-q`` or ``SLEEPNAS_PROGRESS=0``."""
    if os.environ.get("SLEEPNAS_PROGRESS", "1") == "0":
        return False
    return logging.getLogger("sleepnas").getEffectiveLevel() <= logging.INFO


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None,
             unit: str = "it", enabled: bool | None = None) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm progress bar on stderr, unless bars are off.

    All long loops of sleepnas go through this helper, so ``-q`` and
    ``SLEEPNAS_PROGRESS=0`` silence every bar at once.
    """
    if enabled is None:
        enabled = progress_enabled()
    if not enabled:
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)
