"""Benchmark writing one synthetic cassette night beside reading it back with MNE.

Prints, for a default-length night (about 9-10 h, 7 signals), the median wall time of:

- drawing the stage sequence (`sleepnas.tools.stage_model.sample_night`),
- building the signals (`sleepnas.tools.synth_signals.synthesize_signals`),
- the whole `synthesize_recording` (drawing, signals, EDF encoding, atomic writes),
- the reference: ``mne.io.read_raw_edf(..., preload=True)`` of the file just written.

Run from the repository root::

    python benchmarks/bench_synth.py [--repeats 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _median_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    args = parser.parse_args()

    import mne

    from sleepnas.tools.stage_model import sample_night
    from sleepnas.tools.synth import synthesize_recording
    from sleepnas.tools.synth_signals import SubjectTraits, synthesize_signals

    plan = sample_night(np.random.default_rng([args.seed, 0, 1]))
    traits = SubjectTraits.draw(np.random.default_rng([args.seed, 0]))
    hours = len(plan.states) * 30 / 3600

    with tempfile.TemporaryDirectory() as folder:
        psg, _ = synthesize_recording(folder, 0, 1, seed=args.seed)
        figures = {
            "sample_night": _median_time(lambda: sample_night(np.random.default_rng(args.seed)), args.repeats),
            "synthesize_signals": _median_time(lambda: synthesize_signals(
                np.random.default_rng(1), plan.states, plan.clock_h, plan.lights_off, traits), args.repeats),
            "synthesize_recording": _median_time(lambda: synthesize_recording(folder, 0, 1, seed=args.seed),
                                                 args.repeats),
            "reference: mne read_raw_edf(preload=True)": _median_time(
                lambda: mne.io.read_raw_edf(Path(psg), preload=True, verbose="error"), args.repeats),
        }
        size_mb = Path(psg).stat().st_size / 1e6

    print(f"one synthetic night: {hours:.2f} h, {len(plan.states)} windows, PSG file {size_mb:.1f} MB")
    for name, seconds in figures.items():
        print(f"  {name:45s} {seconds:7.3f} s (median of {args.repeats})")


if __name__ == "__main__":
    main()
