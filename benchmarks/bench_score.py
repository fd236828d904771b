"""Benchmark ``sleepnas score`` on one night beside reading the same EDF with MNE alone.

Prints, for one night:

- wall time and peak resident memory of ``sleepnas score`` (the whole command) beside
  those of ``mne.io.read_raw_edf(..., preload=True)`` alone, each in a fresh process
  that runs twice (the first run includes imports), so the cost beyond reading the
  file is visible;
- where the time of scoring goes (reading, normalizing + model + flags, writing files);
- windows per second through the model alone, at batch 1 and at ``--batch-size``.

Without ``--psg`` it writes a synthetic cassette night (about 9-10 h, 7 signals) with
``sleepnas.tools.synth``. Without ``--model`` it builds a small convolutional sleepnas
ONNX model with ``onnx.helper`` (random weights, a TinySleepNet-like first layer). So the
figures need neither torch nor a trained model.

Run from the repository root::

    python benchmarks/bench_score.py [--psg NIGHT.edf] [--model MODEL.onnx] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

# A child process does its work twice and prints one JSON line with three figures. The
# first run is timed with its imports, because MNE imports most of itself on first use.
# The second run is timed alone. The peak RSS comes from ru_maxrss, in KiB on Linux.
_MNE_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    start = time.perf_counter()
    import mne
    raw = mne.io.read_raw_edf(sys.argv[1], preload=True, verbose="error")
    first = time.perf_counter()
    del raw
    raw = mne.io.read_raw_edf(sys.argv[1], preload=True, verbose="error")
    second = time.perf_counter()
    print(json.dumps({"cold_s": first - start, "warm_s": second - first,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")

_SCORE_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    from sleepnas.tools.cli import main

    def score():
        try:
            main(sys.argv[1:])
        except SystemExit as exc:
            if exc.code:
                raise

    start = time.perf_counter()
    score()
    first = time.perf_counter()
    score()
    second = time.perf_counter()
    print(json.dumps({"cold_s": first - start, "warm_s": second - first,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def build_conv_model(path: Path, spec, seed: int = 0) -> Path:
    """Write a small convolutional sleepnas model for ``spec`` with seeded random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    n_classes = len(spec.stage_names)

    def weight(name, *shape):
        fan_in = int(np.prod(shape[1:]))
        return numpy_helper.from_array(
            rng.normal(0.0, 1.0 / np.sqrt(fan_in), size=shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["windows", "w1", "b1"], ["c1"], kernel_shape=[50], strides=[6]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[8], strides=[8]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[8], pads=[3, 4]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], kernel_shape=[8], pads=[3, 4]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w4", "b4"], ["logits"], transB=1),
    ]
    initializers = [
        weight("w1", 32, spec.n_chans, 50), numpy_helper.from_array(np.zeros(32, np.float32), "b1"),
        weight("w2", 64, 32, 8), numpy_helper.from_array(np.zeros(64, np.float32), "b2"),
        weight("w3", 64, 64, 8), numpy_helper.from_array(np.zeros(64, np.float32), "b3"),
        weight("w4", n_classes, 64), numpy_helper.from_array(np.zeros(n_classes, np.float32), "b4"),
    ]
    graph = helper.make_graph(
        nodes, "bench_conv",
        [helper.make_tensor_value_info("windows", TensorProto.FLOAT, ["batch", spec.n_chans, spec.n_times])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_classes])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="sleepnas-benchmark")
    model.ir_version = 8
    helper.set_model_props(model, {
        "sleepnas.format": "1",
        "sleepnas.window_spec": spec.to_json(),
        "sleepnas.stages": json.dumps(list(spec.stage_names)),
        "sleepnas.genotype": "",
        "sleepnas.model": "bench-conv",
        "sleepnas.metrics": "{}",
        "sleepnas.versions": json.dumps({"onnx": onnx.__version__}),
    })
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _run_child(code: str, args: list[str]) -> dict:
    process = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if process.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{process.stderr}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def _median_run(code: str, args: list[str], repeats: int) -> dict:
    runs = [_run_child(code, args) for _ in range(repeats)]
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def _windows_per_s(model, windows: np.ndarray, batch_size: int, repeats: int) -> float:
    model.predict_logits(windows[: batch_size * 2], batch_size)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_logits(windows, batch_size)
        times.append(time.perf_counter() - start)
    return len(windows) / min(times)


def _breakdown(model, psg: Path, out_dir: Path, batch_size: int) -> dict:
    from sleepnas.runtime.hypnogram import build_summary, write_outputs
    from sleepnas.runtime.recordings import read_signals
    from sleepnas.runtime.scoring import score_signals

    start = time.perf_counter()
    data, _ = read_signals(psg, model.spec.channels, sfreq=model.spec.sfreq)
    read = time.perf_counter()
    result = score_signals(model, data, batch_size=batch_size, name=psg.stem)
    scored = time.perf_counter()
    write_outputs(result, out_dir, build_summary(result, model_name=model.path.name))
    written = time.perf_counter()
    return {"read_s": read - start, "score_s": scored - read, "write_s": written - scored,
            "data": data, "n_windows": result.n_windows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--psg", type=Path, help="EDF night to score (default: a synthetic night)")
    parser.add_argument("--model", type=Path, help="sleepnas ONNX model (default: a small conv model)")
    parser.add_argument("--hours", type=float, default=None,
                        help="length of the synthetic night in hours (default: realistic, about 9-10 h)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default: 1)")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per call (default: 64)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; medians (default: 3)")
    args = parser.parse_args()

    from sleepnas.runtime.model import load_model
    from sleepnas.runtime.recordings import read_signals
    from sleepnas.runtime.spec import WindowSpec

    with tempfile.TemporaryDirectory(prefix="sleepnas-bench-score-") as tmp:
        tmp = Path(tmp)
        psg = args.psg
        if psg is None:
            from sleepnas.tools.synth import synthesize_recording

            psg, _ = synthesize_recording(tmp, 0, 1, seed=0, hours=args.hours)
        model_path = args.model
        if model_path is None:
            spec = WindowSpec()
            data, _ = read_signals(psg, spec.channels, sfreq=spec.sfreq)
            n = data.shape[1] // spec.n_times
            windows = data[:, : n * spec.n_times].reshape(spec.n_chans, n, spec.n_times)
            spec = spec.fit_scale(windows.transpose(1, 0, 2)[::4])
            del data, windows
            model_path = build_conv_model(tmp / "bench-conv.onnx", spec)

        common = [str(model_path), str(psg), "-o", str(tmp / "out"), "--threads", str(args.threads),
                  "--batch-size", str(args.batch_size), "--no-reference"]
        mne_only = _median_run(_MNE_CHILD, [str(psg)], args.repeats)
        scoring = _median_run(_SCORE_CHILD, ["-q", "score", *common], args.repeats)

        model = load_model(model_path, threads=args.threads)
        parts = _breakdown(model, psg, tmp / "parts", args.batch_size)
        n = parts["n_windows"]
        spec = model.spec
        raw = parts.pop("data")[:, : n * spec.n_times].reshape(spec.n_chans, n, spec.n_times)
        normalized = spec.normalize(raw.transpose(1, 0, 2))
        del raw
        batch_rate = _windows_per_s(model, normalized, args.batch_size, args.repeats)
        single_rate = _windows_per_s(model, normalized[: min(n, 200)], 1, args.repeats)

        hours = n * spec.window_s / 3600.0
        print(f"one night: {psg.name}, {n} windows ({hours:.1f} h), {spec.n_chans} channels at "
              f"{spec.sfreq:g} Hz; model {model_path.name}; {args.threads} thread(s), batch "
              f"{args.batch_size}; median of {args.repeats} processes")
        print(f"{'':40s}{'first run s':>13s}{'second run s':>14s}{'peak RSS MB':>13s}")
        for label, run in (("read EDF with MNE alone (preload)", mne_only),
                           ("sleepnas score (whole command)", scoring)):
            print(f"{label:40s}{run['cold_s']:13.2f}{run['warm_s']:14.2f}{run['peak_mb']:13.0f}")
        print(f"{'difference (score - MNE read)':40s}{scoring['cold_s'] - mne_only['cold_s']:13.2f}"
              f"{scoring['warm_s'] - mne_only['warm_s']:14.2f}"
              f"{scoring['peak_mb'] - mne_only['peak_mb']:13.0f}")
        print(f"inside one process: read_signals {parts['read_s']:.2f} s; beyond reading, normalize "
              f"+ model + flags {parts['score_s']:.2f} s and write CSV/EDF+/JSON "
              f"{parts['write_s']:.2f} s")
        print(f"model alone: {batch_rate:,.0f} windows/s at batch {args.batch_size}, "
              f"{single_rate:,.0f} windows/s at batch 1 ({args.threads} thread(s))")


if __name__ == "__main__":
    main()
