"""The run directory: its file names, and atomic writers and readers for each file.

A run directory contains ``config.json`` (resolved options), ``window_spec.json``,
``split.json``, ``genotype.json`` (absent for a reference model), ``architecture.txt``,
``results.json``, ``weights.pt`` (state dict of the final model), ``checkpoint.pt``
(everything needed to resume) and ``log.txt``. Every file is written atomically, and
``.pt`` files contain only tensors and plain containers, so they load with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import platform
import random
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.spec import WindowSpec
from sleepnas.runtime.utils import atomic_write_bytes, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

CONFIG = "config.json"
WINDOW_SPEC = "window_spec.json"
SPLIT = "split.json"
GENOTYPE = "genotype.json"
ARCHITECTURE = "architecture.txt"
RESULTS = "results.json"
WEIGHTS = "weights.pt"
CHECKPOINT = "checkpoint.pt"
LOG = "log.txt"


def check_run_dir(save_dir: str | os.PathLike | None = None, *, prefix: str = "run",
                  resume: bool = False) -> Path:
    """Return the run directory path and check it, creating nothing.

    Parameters
    ----------
    save_dir : path-like, optional
        The directory; default ``runs/<prefix>-YYYYMMDD-HHMMSS`` under the working directory.
    prefix : str
        First part of the default name (``"train"``, ``"darts"``, ...).
    resume : bool
        The directory must then exist and contain a ``config.json``. Otherwise it must
        not already contain a run.
    """
    if save_dir is None:
        if resume:
            raise SleepnasError("--resume needs the run directory to continue: give --save-dir RUN")
        save_dir = Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(save_dir)
    if resume:
        if not (path / CONFIG).is_file():
            raise SleepnasError(f"cannot resume {path}: it has no {CONFIG}; give the directory "
                                f"of an earlier run, or start a new run without --resume")
        return path
    if (path / CONFIG).exists() or (path / CHECKPOINT).exists():
        raise SleepnasError(f"{path} already contains a run: choose another --save-dir, "
                            f"or continue that run with --resume")
    if path.exists() and not path.is_dir():
        raise SleepnasError(f"--save-dir {path} is a file: give a directory")
    return path


def create_run_dir(save_dir: str | os.PathLike | None = None, *, prefix: str = "run",
                   resume: bool = False) -> Path:
    """Create the run directory, or check the one a resumed run continues.

    The parameters are those of `check_run_dir`.
    """
    path = check_run_dir(save_dir, prefix=prefix, resume=resume)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(run_dir: str | os.PathLike, name: str, data: Any) -> Path:
    """Write ``data`` as JSON to ``run_dir/name`` atomically."""
    return atomic_write_json(Path(run_dir) / name, data)


def read_json(run_dir: str | os.PathLike, name: str) -> Any:
    """Read ``run_dir/name``; a missing or unparsable file raises a `SleepnasError`."""
    path = Path(run_dir) / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SleepnasError(f"{path} not found: is {Path(run_dir)} a sleepnas run directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SleepnasError(f"invalid JSON in {path}: {err}") from None


def write_text(run_dir: str | os.PathLike, name: str, text: str) -> Path:
    """Write ``text`` to ``run_dir/name`` atomically."""
    return atomic_write_text(Path(run_dir) / name, text)


def write_window_spec(run_dir: str | os.PathLike, spec: WindowSpec) -> Path:
    """Write the fitted window spec to ``window_spec.json``."""
    return write_json(run_dir, WINDOW_SPEC, spec.to_dict())


def read_window_spec(run_dir: str | os.PathLike) -> WindowSpec:
    """Read ``window_spec.json`` of a run."""
    return WindowSpec.from_dict(read_json(run_dir, WINDOW_SPEC))


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Save a dict of tensors and plain containers with `torch.save`, atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_state(path: str | os.PathLike, *, what: str = "file") -> dict[str, Any]:
    """Load a `save_state` file with ``weights_only=True``; a corrupt file raises a `SleepnasError`."""
    path = Path(path)
    if not path.is_file():
        raise SleepnasError(f"{what} {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SleepnasError(f"corrupt {what} {path}: {reason}; delete it, or train again") from None
    if not isinstance(state, dict):
        raise SleepnasError(f"corrupt {what} {path}: expected a dict, found {type(state).__name__}")
    return state


def save_weights(run_dir: str | os.PathLike, state_dict: dict[str, torch.Tensor]) -> Path:
    """Write the model's state dict to ``weights.pt``."""
    return save_state(Path(run_dir) / WEIGHTS, {k: v.detach().cpu() for k, v in state_dict.items()})


def load_weights(run_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read ``weights.pt`` of a run."""
    return load_state(Path(run_dir) / WEIGHTS, what="weights file")


def save_checkpoint(run_dir: str | os.PathLike, checkpoint: dict[str, Any]) -> Path:
    """Write ``checkpoint.pt``; the previous one stays whole until the new one is complete."""
    return save_state(Path(run_dir) / CHECKPOINT, checkpoint)


def load_checkpoint(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``checkpoint.pt`` of a run."""
    return load_state(Path(run_dir) / CHECKPOINT, what="checkpoint")


def capture_rng_state() -> dict[str, Any]:
    """Return the states of torch's, numpy's and Python's global generators as tensors and lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": list(python_state), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators from a `capture_rng_state` dict."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def versions() -> dict[str, str | None]:
    """Return the versions of sleepnas, torch, onnx, onnxruntime, numpy and Python."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in ("sleepnas", "torch", "onnx", "onnxruntime", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    return found


def add_log_file(run_dir: str | os.PathLike) -> logging.Handler:
    """Copy the ``sleepnas`` log into ``run_dir/log.txt`` (appending); return the handler.

    The caller removes the handler with ``logging.getLogger("sleepnas").removeHandler``
    and closes it when the run ends.
    """
    handler = logging.FileHandler(Path(run_dir) / LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    logging.getLogger("sleepnas").addHandler(handler)
    return handler
