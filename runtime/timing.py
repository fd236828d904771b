"""Time ONNX files with onnxruntime, without torch.

Used by ``sleepnas bench`` (whole models) and by ``sleepnas cost measure`` (the
op models of a latency table). Every session runs with a fixed intra-op thread
count, one inter-op thread and sequential execution, so figures taken with the
same thread count on the same device can be compared.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.utils import progress

logger = logging.getLogger(__name__)

#: Version of the op manifest (written by ``cost export-ops``) and of the table (written here).
MANIFEST_FORMAT = 1
TABLE_FORMAT = 1
MANIFEST_NAME = "manifest.json"

#: Clocks a run can be timed with; see `time_session`.
CLOCKS = ("wall", "cpu")

# onnxruntime's type strings of the inputs we can fill with random data.
_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}

# Exceptions onnxruntime raises for a file it cannot load. None derives from RuntimeError.
_LOAD_ERRORS = (_ort_state.Fail, _ort_state.InvalidGraph, _ort_state.InvalidProtobuf,
                _ort_state.NoSuchFile, _ort_state.InvalidArgument, _ort_state.NotImplemented,
                _ort_state.RuntimeException)


@dataclass(frozen=True)
class TimingResult:
    """Latencies of one ONNX file at one thread count and batch size.

    Attributes
    ----------
    path : str
        The ONNX file.
    threads : int
        Intra-op threads of the session.
    batch_size : int
        Windows per run.
    latencies_ms : tuple of float
        Time of each timed run on ``clock``, in milliseconds, warm-up runs excluded.
    cold_start_ms : float
        Time to create the session (load, optimize and allocate), in milliseconds.
    warmup : int
        Untimed runs before the timed ones.
    clock : str
        ``"wall"`` or ``"cpu"``; see `time_session`.
    """

    path: str
    threads: int
    batch_size: int
    latencies_ms: tuple[float, ...] = field(repr=False)
    cold_start_ms: float
    warmup: int
    clock: str = "wall"

    def percentile_ms(self, q: float) -> float:
        """Return the ``q``-th percentile (0-100) of the run latencies, in milliseconds."""
        return float(np.percentile(np.asarray(self.latencies_ms), q))

    @property
    def p50_ms(self) -> float:
        """Median run latency in milliseconds."""
        return self.percentile_ms(50)

    @property
    def p90_ms(self) -> float:
        """90th percentile run latency in milliseconds."""
        return self.percentile_ms(90)

    @property
    def p99_ms(self) -> float:
        """99th percentile run latency in milliseconds."""
        return self.percentile_ms(99)

    @property
    def mean_ms(self) -> float:
        """Mean run latency in milliseconds."""
        return float(np.mean(self.latencies_ms))

    @property
    def repeats(self) -> int:
        """Number of timed runs."""
        return len(self.latencies_ms)

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-ready values, with the percentiles added."""
        record = asdict(self)
        record["latencies_ms"] = list(self.latencies_ms)
        record.update(p50_ms=self.p50_ms, p90_ms=self.p90_ms, p99_ms=self.p99_ms,
                      mean_ms=self.mean_ms, repeats=self.repeats)
        return record


def _check_count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SleepnasError(f"invalid {name} {value!r}: expected an integer >= {minimum}")
    return int(value)


def make_session(path: str | os.PathLike, threads: int,
                 providers: Sequence[str] | None = None) -> ort.InferenceSession:
    """Create an onnxruntime session with a fixed thread count.

    Parameters
    ----------
    path : path-like
        ONNX file.
    threads : int
        Intra-op threads (>= 1). Inter-op threads are 1 and execution is sequential,
        so the figure depends on this one number.
    providers : sequence of str, optional
        Execution providers; default ``["CPUExecutionProvider"]``.

    Returns
    -------
    onnxruntime.InferenceSession

    Raises
    ------
    SleepnasError
        If the file is missing or onnxruntime cannot load it.
    """
    threads = _check_count("threads", threads, 1)
    path = Path(path)
    if not path.is_file():
        raise SleepnasError(f"ONNX file not found: {path}")

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3

    try:
        return ort.InferenceSession(str(path), sess_options=options,
                                    providers=list(providers or ["CPUExecutionProvider"]))
    except _LOAD_ERRORS as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SleepnasError(f"cannot load ONNX file {path}: {first_line}") from err


def random_inputs(session: ort.InferenceSession, batch_size: int = 1,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Return a feed of standard-normal inputs that match the session's input shapes.

    A symbolic or unknown first dimension becomes ``batch_size``. A fixed first
    dimension is kept, so a model exported for batch 1 always gets batch 1.

    Raises
    ------
    SleepnasError
        If an input has a symbolic dimension other than the first, or a type
        that cannot be filled with random numbers.
    """
    batch_size = _check_count("batch_size", batch_size, 1)
    rng = np.random.default_rng(seed)
    feed = {}
    for node in session.get_inputs():
        shape = []
        for axis, dim in enumerate(node.shape):
            if isinstance(dim, int) and dim > 0:
                shape.append(dim)
            elif axis == 0:
                shape.append(batch_size)
            else:
                raise SleepnasError(f"input {node.name!r} has the dynamic axis {axis} ({dim!r}): "
                                    "only the first (batch) axis may be dynamic")
        dtype = _NUMPY_TYPES.get(node.type)
        if dtype is None:
            raise SleepnasError(f"input {node.name!r} has the type {node.type}: expected one of "
                                + ", ".join(_NUMPY_TYPES))
        feed[node.name] = rng.standard_normal(shape).astype(dtype)
    return feed


def check_clock(clock: str, threads: int) -> str:
    """Return ``clock`` if it is valid for ``threads`` threads, else raise a `SleepnasError`."""
    if clock not in CLOCKS:
        raise SleepnasError(f"invalid clock {clock!r}: expected one of {', '.join(CLOCKS)}")
    if clock == "cpu" and threads != 1:
        raise SleepnasError(f"invalid clock 'cpu' with {threads} threads: the CPU clock counts "
                            "the calling thread only, so it needs --threads 1")
    return clock


def time_session(session: ort.InferenceSession, feed: Mapping[str, np.ndarray], *,
                 warmup: int = 10, repeats: int = 100, clock: str = "wall") -> list[float]:
    """Run ``session`` ``warmup`` times untimed, then ``repeats`` times timed.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
    feed : mapping of str to ndarray
        The inputs.
    warmup, repeats : int
        Untimed runs, then timed runs.
    clock : {"wall", "cpu"}
        ``"wall"`` is the latency a user sees. ``"cpu"`` is the CPU time of the
        calling thread, which leaves out the time other processes hold the core, so
        it is steadier on a shared machine. It is meaningful only for a session
        with one intra-op thread, which runs every kernel in the calling thread.

    Returns
    -------
    list of float
        Latency of each timed run in milliseconds.
    """
    warmup = _check_count("warmup", warmup, 0)
    repeats = _check_count("repeats", repeats, 1)
    if clock not in CLOCKS:
        raise SleepnasError(f"invalid clock {clock!r}: expected one of {', '.join(CLOCKS)}")
    now_ns = time.perf_counter_ns if clock == "wall" else time.thread_time_ns
    feed = dict(feed)
    for _ in range(warmup):
        session.run(None, feed)

    latencies_ms = []
    for _ in range(repeats):
        start = now_ns()
        session.run(None, feed)
        latencies_ms.append((now_ns() - start) / 1e6)
    return latencies_ms


def time_model(path: str | os.PathLike, *, threads: int = 1, batch_size: int = 1,
               warmup: int = 10, repeats: int = 100, seed: int = 0,
               providers: Sequence[str] | None = None, clock: str = "wall") -> TimingResult:
    """Time one ONNX file: session creation, then warm-up runs, then timed runs.

    Parameters
    ----------
    path : path-like
        ONNX file; its first axis may be dynamic (it becomes ``batch_size``).
    threads : int
        Intra-op threads of the session.
    batch_size : int
        Windows per run when the batch axis is dynamic.
    warmup, repeats : int
        Untimed runs, then timed runs.
    seed : int
        Seed of the random input.
    providers : sequence of str, optional
        Execution providers; default CPU.
    clock : {"wall", "cpu"}
        Clock of the timed runs (see `time_session`); ``"cpu"`` needs ``threads=1``.
        Session creation is always timed on the wall clock.

    Returns
    -------
    TimingResult
    """
    check_clock(clock, threads)
    start = time.perf_counter_ns()
    session = make_session(path, threads, providers)
    cold_start_ms = (time.perf_counter_ns() - start) / 1e6

    feed = random_inputs(session, batch_size, seed)
    latencies_ms = time_session(session, feed, warmup=warmup, repeats=repeats, clock=clock)
    return TimingResult(path=str(path), threads=int(threads), batch_size=int(batch_size),
                        latencies_ms=tuple(latencies_ms), cold_start_ms=cold_start_ms,
                        warmup=int(warmup), clock=clock)


def device_name() -> str:
    """Return a name for this machine's processor: the CPU model, else the platform."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    name = platform.processor() or platform.machine()
    return f"{platform.system()} {name}".strip() or "unknown"


def table_key(device: str, ort_version: str, threads: int, clock: str = "wall") -> str:
    """Return the cache key of a latency table: device, onnxruntime version, threads and clock.

    The wall clock, the default, adds nothing to the key.
    """
    safe_device = "".join(c if c.isalnum() else "-" for c in device).strip("-").lower()
    while "--" in safe_device:
        safe_device = safe_device.replace("--", "-")
    suffix = "" if clock == "wall" else f"__{clock}"
    return f"{safe_device or 'unknown'}__ort-{ort_version}__t{threads}{suffix}"


def read_manifest(op_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check the manifest of a folder of op models written by ``cost export-ops``.

    Raises
    ------
    SleepnasError
        If the manifest is missing, does not parse, or names an ONNX file that is absent.
    """
    op_dir = Path(op_dir)
    path = op_dir / MANIFEST_NAME
    if not path.is_file():
        raise SleepnasError(f"no {MANIFEST_NAME} in {op_dir}: "
                            "write the op models with `sleepnas cost export-ops` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        entries = manifest["entries"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(entries, list):
            raise ValueError(f"format {manifest.get('format')!r}, expected {MANIFEST_FORMAT}")
        for entry in entries:
            if not isinstance(entry["key"], str) or not isinstance(entry["file"], str):
                raise ValueError("an entry lacks a string 'key' or 'file'")
        files = [entry["file"] for entry in entries]
        for calibration in manifest.get("calibrations", []):
            if not isinstance(calibration["network_id"], str):
                raise ValueError("a calibration lacks a string 'network_id'")
            for sample in calibration["samples"]:
                if not isinstance(sample["file"], str) or not isinstance(sample["keys"], list):
                    raise ValueError("a calibration sample lacks a string 'file' or a list 'keys'")
                files.append(sample["file"])
        if manifest.get("empty_model"):
            files.append(manifest["empty_model"])
    except (ValueError, KeyError, TypeError) as err:
        raise SleepnasError(f"invalid op manifest {path} ({err}): "
                            "write it again with `sleepnas cost export-ops`") from err

    for file in files:
        if not (op_dir / file).is_file():
            raise SleepnasError(f"op model {op_dir / file} listed in {path} is missing")
    return manifest


def measure_op_dir(op_dir: str | os.PathLike, threads: int = 1, *, warmup: int = 20,
                   repeats: int = 100, keys: Sequence[str] | None = None,
                   calibrate: bool = True, clock: str = "wall",
                   show_progress: bool | None = None) -> dict[str, Any]:
    """Time every op model of a folder written by ``cost export-ops`` into a latency table.

    Each model runs at batch 1 in its own session; its latency is the median of
    ``repeats`` timed runs after ``warmup`` untimed ones. Two more kinds of model
    in the manifest are timed the same way: the empty model (input copied to
    output), whose latency is the cost of one ``session.run`` call and is stored as
    ``run_overhead_ms``, and the calibration networks, whole networks whose measured
    latency the cost model fits its correction on.

    Parameters
    ----------
    op_dir : path-like
        Folder with ``manifest.json`` and the ONNX files it lists.
    threads : int
        Intra-op threads.
    warmup, repeats : int
        Untimed and timed runs per model.
    keys : sequence of str, optional
        Time only these entries (to fill the gaps of a cached table).
    calibrate : bool
        Time the calibration networks too.
    clock : {"wall", "cpu"}
        Clock of the timed runs; see `time_session`.
    show_progress : bool, optional
        Force the progress bar on or off; default follows the CLI verbosity.

    Returns
    -------
    dict
        The table as JSON-ready values: ``format``, ``device``, ``onnxruntime``,
        ``threads``, ``clock``, ``batch_size``, ``warmup``, ``repeats``, ``run_overhead_ms``,
        ``latency_ms`` (entry key -> median milliseconds) and ``calibrations`` (per
        network: ``network_id``, the ``keys`` of each sample and its ``measured_ms``).
    """
    threads = _check_count("threads", threads, 1)
    check_clock(clock, threads)
    op_dir = Path(op_dir)
    manifest = read_manifest(op_dir)
    entries = manifest["entries"]
    if keys is not None:
        selected = set(keys)
        entries = [entry for entry in entries if entry["key"] in selected]
    calibrations = manifest.get("calibrations", []) if calibrate else []

    # One list of jobs, so a single progress bar covers op models and calibration networks.
    jobs = [("op", entry["key"], entry["file"]) for entry in entries]
    if manifest.get("empty_model"):
        jobs.append(("overhead", "", manifest["empty_model"]))
    for n, calibration in enumerate(calibrations):
        jobs += [("calibration", str(n), sample["file"]) for sample in calibration["samples"]]

    latency_ms: dict[str, float] = {}
    overhead_ms = 0.0
    measured: dict[str, list[float]] = {}
    for kind, name, file in progress(jobs, desc="timing op models", unit="model",
                                     enabled=show_progress):
        p50_ms = time_model(op_dir / file, threads=threads, batch_size=1, warmup=warmup,
                            repeats=repeats, clock=clock).p50_ms
        logger.debug("%s %s (%s): %.4f ms", kind, name, file, p50_ms)
        if kind == "op":
            latency_ms[name] = p50_ms
        elif kind == "overhead":
            overhead_ms = p50_ms
        else:
            measured.setdefault(name, []).append(p50_ms)

    return {
        "format": TABLE_FORMAT,
        "device": device_name(),
        "onnxruntime": ort.__version__,
        "threads": threads,
        "clock": clock,
        "batch_size": 1,
        "warmup": warmup,
        "repeats": repeats,
        "run_overhead_ms": overhead_ms,
        "latency_ms": latency_ms,
        "calibrations": [
            {"network_id": calibration["network_id"],
             "keys": [sample["keys"] for sample in calibration["samples"]],
             "measured_ms": measured[str(n)]}
            for n, calibration in enumerate(calibrations)
        ],
    }
