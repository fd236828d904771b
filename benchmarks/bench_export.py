"""Benchmark exported models: ONNX beside torch eager, INT8 beside float, and throughput.

For each run directory it exports the float and the INT8 model (``sleepnas export
--quantize int8``) and measures, in the same run and each in a fresh process:

- p50 latency per window at batch 1 of the float ONNX model beside the same model in
  torch eager, at the same thread count (the ratio ONNX / torch);
- the INT8 model's p50 beside the float model's (the INT8 ratio);
- throughput in windows per second at a larger batch, for all three.

Without ``--run`` it builds two stand-in run directories with seeded initial weights,
because latency does not depend on the weight values. One is a random genotype of the
``small`` preset, standing in for a small search's winner. The other is TinySleepNet,
the reference model. Both take 7 channels x 3000 samples. Give ``--run`` to measure
real runs; their parity and calibration windows then come from their data path.

Run from the repository root::

    python benchmarks/bench_export.py [--run RUN_DIR ...] [--threads 1] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _stand_in_runs(folder: Path) -> list[Path]:
    from sleepnas.runtime.spec import WindowSpec
    from sleepnas.search.genotype import random_genotype
    from sleepnas.search.network import network_config
    from tests.export.runs import make_run_dir

    spec = WindowSpec(scale=(20.0,) * 7)
    small = network_config("small")
    genotype = random_genotype(small.ops, small.num_nodes, seed=0)
    return [make_run_dir(folder / "small-genotype", genotype=genotype, spec=spec, config=small),
            make_run_dir(folder / "tinysleepnet", model="tinysleepnet", spec=spec, config=small)]


def _measure(run: Path, folder: Path, threads: int, batch_size: int, repeats: int) -> None:
    from sleepnas.export.onnx_export import export_run
    from sleepnas.tools.bench import bench_models, format_table

    output = folder / f"{run.name}.int8.onnx"
    report = export_run(run, output, quantize="int8", parity_windows=32)
    float_path = report.float_output
    print(f"\n== {run.name}: {report.n_nodes} nodes, float {float_path.stat().st_size} bytes, "
          f"INT8 {output.stat().st_size} bytes (types {', '.join(report.quantization.quantized_types) or 'none'})")
    print(f"parity: {report.parity.describe()}")

    records = bench_models([float_path, output], threads=(threads,), batch_sizes=(1, batch_size),
                           warmup=20, repeats=repeats, torch_run=run)
    print(format_table(records))

    by_key = {(r["engine"], r["model"], r["batch_size"]): r for r in records}
    onnx_1 = by_key[("onnxruntime", str(float_path), 1)]
    int8_1 = by_key[("onnxruntime", str(output), 1)]
    torch_1 = by_key[("torch", str(run), 1)]
    print(f"batch 1, {threads} thread(s): ONNX p50 {onnx_1['p50_ms']:.3f} ms, torch eager p50 "
          f"{torch_1['p50_ms']:.3f} ms, ratio ONNX/torch {onnx_1['p50_ms'] / torch_1['p50_ms']:.2f}")
    print(f"INT8 p50 {int8_1['p50_ms']:.3f} ms, ratio INT8/float {int8_1['p50_ms'] / onnx_1['p50_ms']:.2f}")
    for engine, model in (("onnxruntime", str(float_path)), ("onnxruntime", str(output)),
                          ("torch", str(run))):
        record = by_key[(engine, model, batch_size)]
        print(f"throughput at batch {batch_size}: {Path(model).name} ({engine}) "
              f"{record['throughput_windows_per_s']:.0f} windows/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, action="append", help="Run directory (repeatable).")
    parser.add_argument("--threads", type=int, default=1, help="Intra-op threads.")
    parser.add_argument("--batch-size", type=int, default=64, help="Batch of the throughput figure.")
    parser.add_argument("--repeats", type=int, default=200, help="Timed runs per measurement.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sleepnas-bench-export-") as tmp:
        folder = Path(tmp)
        runs = args.run or _stand_in_runs(folder)
        for run in runs:
            _measure(run, folder, args.threads, args.batch_size, args.repeats)


if __name__ == "__main__":
    main()
