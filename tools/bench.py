"""Latency, throughput and memory of ONNX models (and of a run's torch model) on this machine.

Each measurement, one model at one thread count and batch size, runs in a fresh
Python process, so its peak resident memory belongs to that measurement alone and
one session's caches cannot speed up the next. ONNX
measurements import no torch; only ``torch_run`` starts processes that do.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.spec import WindowSpec
from sleepnas.runtime.utils import progress

logger = logging.getLogger(__name__)

#: Keys of every benchmark record, in the order the JSON output lists them.
BENCH_KEYS = ("model", "threads", "batch_size", "p50_ms", "p90_ms", "p99_ms",
              "throughput_windows_per_s", "cold_start_ms", "peak_rss_mb", "model_bytes")

_WORKER = "from sleepnas.tools.bench import _worker_main; _worker_main()"


def _check_counts(name: str, values: Sequence[int]) -> tuple[int, ...]:
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise SleepnasError(f"invalid {name} {','.join(map(str, values)) or '(empty)'}: "
                            f"expected integers >= 1 separated by commas, such as 1,2")
    return values


def _check_onnx(path: Path) -> WindowSpec:
    """Load a model once to check it is a readable sleepnas model; return its window spec."""
    from sleepnas.runtime.model import load_model

    return load_model(path, threads=1).spec


def _torch_spec(run_dir: Path) -> WindowSpec:
    spec_path = run_dir / "window_spec.json"
    if not (run_dir / "weights.pt").is_file() or not spec_path.is_file():
        raise SleepnasError(f"invalid --torch {run_dir}: expected a finished run directory with "
                            f"weights.pt and window_spec.json")
    try:
        return WindowSpec.from_dict(json.loads(spec_path.read_text()))
    except json.JSONDecodeError as err:
        raise SleepnasError(f"invalid JSON in {spec_path}: {err}") from None


def _check_torch_run(run_dir: Path, model_path: Path, model_spec: WindowSpec) -> None:
    run_spec = _torch_spec(run_dir)
    if run_spec.channels != model_spec.channels or run_spec.n_times != model_spec.n_times:
        raise SleepnasError(
            f"--torch {run_dir} was built for channels {list(run_spec.channels)} x {run_spec.n_times} "
            f"samples, but {model_path} for {list(model_spec.channels)} x {model_spec.n_times}: "
            f"give the run directory the model was exported from")
    import importlib.util

    try:
        torch_found = importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        torch_found = False
    if not torch_found:
        raise SleepnasError("--torch needs torch, which is not installed: install sleepnas[search] "
                            "or leave out --torch")


def _run_worker(job: dict) -> dict:
    """Run one measurement in a fresh interpreter and return its record."""
    completed = subprocess.run([sys.executable, "-c", _WORKER, json.dumps(job)],
                               capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        lines = [line for line in completed.stderr.strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {completed.returncode}"
        raise SleepnasError(f"benchmark of {job['model']} at {job['threads']} thread(s), batch "
                            f"{job['batch_size']} failed: {reason}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def bench_models(models: Sequence[str | Path], *, threads: Sequence[int] = (1,),
                 batch_sizes: Sequence[int] = (1, 8, 64), warmup: int = 10, repeats: int = 100,
                 torch_run: str | Path | None = None, seed: int = 0) -> list[dict]:
    """Measure ONNX models, and optionally the torch model of a run, at each thread count and batch size.

    Parameters
    ----------
    models : sequence of path
        sleepnas ONNX files; the first is the reference of the ratios in `format_table`.
    threads : sequence of int
        Intra-op thread counts (onnxruntime ``intra_op_num_threads``, torch
        ``set_num_threads``).
    batch_sizes : sequence of int
        Windows per run. Batch 1 gives the latency per window, larger ones the throughput.
    warmup, repeats : int
        Untimed runs, then timed runs, per measurement.
    torch_run : path, optional
        A run directory whose model is timed in torch eager on the same inputs.
    seed : int
        Seed of the random input windows.

    Returns
    -------
    list of dict
        One record per model, thread count and batch size with the keys of
        `BENCH_KEYS`, plus ``engine`` and ``baseline_rss_mb``:

        - ``p50_ms``, ``p90_ms``, ``p99_ms``: percentiles of the time of one run of a
          whole batch.
        - ``throughput_windows_per_s``: windows over the summed time of the timed runs.
        - ``cold_start_ms``: time to create the onnxruntime session. For torch, time to
          build the model and load its weights.
        - ``peak_rss_mb``: peak resident memory of the measuring process, which includes
          the interpreter and the imported libraries. ``baseline_rss_mb`` is that peak
          just before the model was loaded, so the difference estimates the model's share.
    """
    threads = _check_counts("--threads", threads)
    batch_sizes = _check_counts("--batch-sizes", batch_sizes)
    if isinstance(warmup, bool) or warmup < 0 or isinstance(repeats, bool) or repeats < 1:
        raise SleepnasError(f"invalid --warmup {warmup} or --repeats {repeats}: expected warmup >= 0 "
                            f"and repeats >= 1")
    if not models:
        raise SleepnasError("no model to benchmark: give an ONNX file")

    paths = [Path(m) for m in models]
    specs = [_check_onnx(path) for path in paths]
    for path, spec in zip(paths[1:], specs[1:]):
        if spec.channels != specs[0].channels:
            logger.warning("%s takes channels %s, %s takes %s: the comparison is across inputs",
                           path, list(spec.channels), paths[0], list(specs[0].channels))

    jobs = [{"engine": "onnxruntime", "model": str(path), "threads": t, "batch_size": b}
            for path in paths for t in threads for b in batch_sizes]
    if torch_run is not None:
        torch_run = Path(torch_run)
        _check_torch_run(torch_run, paths[0], specs[0])
        jobs += [{"engine": "torch", "model": str(torch_run), "threads": t, "batch_size": b}
                 for t in threads for b in batch_sizes]

    records = []
    for job in progress(jobs, desc="bench", unit="measurement"):
        job.update(warmup=warmup, repeats=repeats, seed=seed)
        records.append(_run_worker(job))
    return records


def _peak_rss_mb() -> float:
    """Return this process's peak resident memory in MiB.

    On Linux this is ``VmHWM`` of ``/proc/self/status``, the peak of the current
    address space. ``ru_maxrss`` would be wrong there: it keeps the peak of the
    parent's address space that was replaced at ``exec``, so every measurement process
    would report at least the parent's memory.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass

    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # NOTE: outside Linux ru_maxrss may include the parent's peak, as explained above.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _record(job: dict, latencies_ms: Sequence[float], cold_start_ms: float, baseline_rss_mb: float,
            model_bytes: int) -> dict:
    import numpy as np

    latencies = np.asarray(latencies_ms, dtype=np.float64)
    record = {
        "model": job["model"],
        "threads": job["threads"],
        "batch_size": job["batch_size"],
        "p50_ms": float(np.percentile(latencies, 50)),
        "p90_ms": float(np.percentile(latencies, 90)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "throughput_windows_per_s": float(job["batch_size"] * len(latencies) / latencies.sum() * 1e3),
        "cold_start_ms": float(cold_start_ms),
        "peak_rss_mb": _peak_rss_mb(),
        "model_bytes": int(model_bytes),
    }
    record.update(engine=job["engine"], baseline_rss_mb=baseline_rss_mb)
    return record


def _measure_onnx(job: dict) -> dict:
    from sleepnas.runtime.timing import time_model

    baseline = _peak_rss_mb()
    result = time_model(job["model"], threads=job["threads"], batch_size=job["batch_size"],
                        warmup=job["warmup"], repeats=job["repeats"], seed=job["seed"])
    return _record(job, result.latencies_ms, result.cold_start_ms, baseline,
                   Path(job["model"]).stat().st_size)


def _measure_torch(job: dict) -> dict:
    import numpy as np
    import torch

    from sleepnas.search.models import build_model

    torch.set_num_threads(job["threads"])
    baseline = _peak_rss_mb()
    start = time.perf_counter_ns()
    model, spec, _ = build_model(job["model"])
    cold_start_ms = (time.perf_counter_ns() - start) / 1e6

    rng = np.random.default_rng(job["seed"])
    windows = torch.from_numpy(rng.standard_normal((job["batch_size"], spec.n_chans, spec.n_times),
                                                   dtype=np.float32))
    latencies_ms = []
    with torch.inference_mode():
        for i in range(job["warmup"] + job["repeats"]):
            start = time.perf_counter_ns()
            model(windows)
            if i >= job["warmup"]:
                latencies_ms.append((time.perf_counter_ns() - start) / 1e6)
    return _record(job, latencies_ms, cold_start_ms, baseline,
                   (Path(job["model"]) / "weights.pt").stat().st_size)


def _worker_main() -> None:
    """Entry point of a measurement process: read the job from argv, print one JSON record."""
    job = json.loads(sys.argv[1])
    try:
        record = _measure_torch(job) if job["engine"] == "torch" else _measure_onnx(job)
    except SleepnasError as err:
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(record))


def format_table(records: Sequence[dict]) -> str:
    """Return the records as an aligned text table with ratios against the first model.

    The ratio columns divide each record's p50 latency and throughput by those of the
    first model's record at the same thread count and batch size.
    """
    reference = {}
    for record in records:
        reference.setdefault((record["threads"], record["batch_size"]), record)

    header = ("model", "engine", "threads", "batch", "p50 ms", "p90 ms", "p99 ms", "windows/s",
              "cold start ms", "peak RSS MB", "bytes", "p50 ratio", "throughput ratio")
    rows = [header]
    for record in records:
        base = reference[(record["threads"], record["batch_size"])]
        rows.append((
            Path(record["model"]).name, record.get("engine", ""), str(record["threads"]),
            str(record["batch_size"]), f"{record['p50_ms']:.3f}", f"{record['p90_ms']:.3f}",
            f"{record['p99_ms']:.3f}", f"{record['throughput_windows_per_s']:.1f}",
            f"{record['cold_start_ms']:.1f}", f"{record['peak_rss_mb']:.1f}", str(record["model_bytes"]),
            f"{record['p50_ms'] / base['p50_ms']:.2f}",
            f"{record['throughput_windows_per_s'] / base['throughput_windows_per_s']:.2f}",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if i < 2 else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(row, widths))) for row in rows]
    return "\n".join(lines)
