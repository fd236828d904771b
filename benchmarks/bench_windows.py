"""Benchmark building the windows of one night beside reading the same EDF with MNE alone.

Prints, for one night, the wall time and peak resident memory of

- ``mne.io.read_raw_edf(..., preload=True)`` and ``get_data()`` of the 7 signals, the
  reference, because any reader of the file through MNE does this much,
- ``load_recording_windows`` (read, resample, check, trim and cut windows),
- ``load_cohort`` with an empty window store (all of the above, then writing the store),
- ``load_cohort`` again, served from the store (memory-mapped, no EDF read).

Each step runs in a fresh process after its imports, so peak memory is the step's own
(the resident size after the imports is printed too). Without ``--psg`` it writes a
synthetic cassette night with ``sleepnas.tools.synth``. Real Sleep-EDF cassette files
span about 20 h, about twice the synthetic default, so expect figures about twice as
large (an estimate: no real PSG file was at hand to measure).

Run from the repository root::

    python benchmarks/bench_windows.py [--psg SC4001E0-PSG.edf] [--hours H] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

# Each child imports what it needs, records the resident size, runs one step and prints
# one JSON line. Peak memory is VmHWM from /proc (Linux): unlike ru_maxrss it restarts
# at exec, so the benchmark process's own memory does not leak into the figure.
_CHILD = textwrap.dedent("""
    import json, sys, time
    import mne, numpy as np
    from sleepnas.runtime.recordings import find_recordings, load_recording_windows
    from sleepnas.runtime.spec import WindowSpec
    from sleepnas.runtime.store import load_cohort

    def status_mb(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024

    step, psg, cache = sys.argv[1], sys.argv[2], sys.argv[3]
    spec = WindowSpec()
    base = status_mb("VmRSS")
    start = time.perf_counter()
    if step == "mne":
        raw = mne.io.read_raw_edf(psg, preload=True, verbose="error")
        n = raw.get_data().shape[1]
    elif step == "windows":
        (rec,) = find_recordings(psg)
        n = len(load_recording_windows(rec, spec)[0])
    else:
        cohort = load_cohort(psg, spec, cache_dir=cache)
        n = len(cohort)
        float(np.asarray(cohort.windows[-1]).sum())  # touch the mapped data
    elapsed = time.perf_counter() - start
    peak = status_mb("VmHWM")
    print(json.dumps({"s": elapsed, "peak_mb": peak, "base_mb": base, "n": int(n)}))
""")

_STEPS = (
    ("mne", "MNE read_raw_edf + get_data (reference)", "samples"),
    ("windows", "load_recording_windows", "windows"),
    ("build", "load_cohort, empty window store", "windows"),
    ("cached", "load_cohort, from the window store", "windows"),
)


def _run_step(step: str, psg: Path, cache: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", _CHILD, step, str(psg), str(cache)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _synthetic_night(folder: Path, hours: float | None) -> Path:
    from sleepnas.tools.synth import synthesize_recording

    psg, _ = synthesize_recording(folder, 0, 1, seed=0, hours=hours)
    return psg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--psg", type=Path, help="A PSG file with its hypnogram beside it.")
    parser.add_argument("--hours", type=float, default=None,
                        help="Length of the synthetic night in hours (default: the "
                             "synthesizer's realistic night).")
    parser.add_argument("--repeats", type=int, default=3,
                        help="Runs of each step; the median time is printed.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        psg = args.psg or _synthetic_night(tmp / "data", args.hours)
        size_mb = psg.stat().st_size / 2**20
        print(f"night: {psg.name}, {size_mb:.1f} MiB; python {sys.version.split()[0]}")
        print(f"{'step':<42}{'time s':>9}{'peak MiB':>10}{'after imports':>15}{'count':>10}")
        for step, label, unit in _STEPS:
            runs = []
            for repeat in range(args.repeats):
                cache = tmp / f"cache-{step}-{repeat}"
                if step == "cached":
                    cache = tmp / "cache-build-0"
                runs.append(_run_step(step, psg, cache))
            seconds = statistics.median(r["s"] for r in runs)
            peak = max(r["peak_mb"] for r in runs)
            base = statistics.median(r["base_mb"] for r in runs)
            print(f"{label:<42}{seconds:>9.3f}{peak:>10.0f}{base:>15.0f}"
                  f"{runs[0]['n']:>10} {unit}")


if __name__ == "__main__":
    main()
