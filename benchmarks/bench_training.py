"""Benchmark one training step beside the mini-batch loading that feeds it.

Prints median wall times, over ``--repeats`` runs after 2 warm-up runs, of

- reading and normalizing a random mini-batch from a memory-mapped window file, beside
  the same from an array already in memory (the reference: no disk read),
- one training step (forward, backward, SGD step) of TinySleepNet and of a random
  genotype of the ``small`` preset, on a batch already loaded,
- TinySleepNet at batch 1: torch eager beside the exported ONNX model in onnxruntime,
  both on ``--threads`` threads.

The window file lives in a temporary folder, so the page cache likely contains it and the
memmap figure is a lower bound for a cold disk.

Run from the repository root::

    python benchmarks/bench_training.py [--batch-size 32] [--repeats 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sleepnas.runtime.spec import WindowSpec
from sleepnas.search.dataset import _batch, make_data
from sleepnas.search.genotype import random_genotype
from sleepnas.search.models import create_model
from sleepnas.search.network import network_config


def _median_ms(step, repeats: int) -> float:
    for _ in range(2):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _data(windows: np.ndarray, spec: WindowSpec):
    n = len(windows)
    labels = np.arange(n) % 5
    subjects = np.array([f"s{i % 4}" for i in range(n)])
    return make_data(windows, labels, subjects, spec, {"train": ["s0", "s1"], "val": ["s2"], "test": ["s3"]})


def _loading(args: argparse.Namespace, folder: Path) -> None:
    spec = WindowSpec()
    rng = np.random.default_rng(0)
    in_memory = rng.normal(0, 20, (args.windows, spec.n_chans, spec.n_times)).astype(np.float32)
    path = folder / "windows.f32"
    mapped = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=in_memory.shape)
    mapped[:] = in_memory
    mapped.flush()
    mapped = np.load(path, mmap_mode="r")

    for label, windows in (("in-memory array (reference)", in_memory), ("memmap", mapped)):
        data = _data(windows, spec)
        picks = np.random.default_rng(1)
        ms = _median_ms(lambda: _batch(data, picks.choice(data.train_index, args.batch_size,
                                                          replace=False), torch.device("cpu")),
                        args.repeats)
        print(f"  load + normalize batch of {args.batch_size}, {label:28s} {ms:8.2f} ms")


def _steps(args: argparse.Namespace) -> None:
    spec = WindowSpec()
    x = torch.randn(args.batch_size, spec.n_chans, spec.n_times)
    y = torch.arange(args.batch_size) % 5
    small = network_config("small")
    models = {"tinysleepnet": create_model("tinysleepnet", small),
              "small-preset genotype": create_model(random_genotype(small.ops, small.num_nodes, seed=0), small)}
    for name, model in models.items():
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(model=model, optimizer=optimizer) -> None:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()

        print(f"  training step, batch {args.batch_size}, {name:28s} {_median_ms(step, args.repeats):8.2f} ms")


def _latency(args: argparse.Namespace, folder: Path) -> None:
    from sleepnas.runtime.timing import time_model
    from sleepnas.search.onnx_io import export_onnx

    small = network_config("small")
    model = create_model("tinysleepnet", small).eval()
    x = torch.randn(1, small.in_channels, small.n_times)
    with torch.no_grad():
        eager = _median_ms(lambda: model(x), args.repeats * 5)
    path = folder / "tinysleepnet.onnx"
    export_onnx(model, [x], path, input_names=["windows"], output_names=["logits"], dynamic_batch=True)
    onnx = time_model(path, threads=args.threads, batch_size=1, warmup=10, repeats=args.repeats * 5).p50_ms
    print(f"  tinysleepnet batch 1, torch eager (reference)       {eager:8.3f} ms")
    print(f"  tinysleepnet batch 1, onnxruntime                   {onnx:8.3f} ms  "
          f"(ratio {onnx / eager:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--windows", type=int, default=800, help="windows in the memory-mapped file")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} runs")
    with tempfile.TemporaryDirectory(prefix="sleepnas-bench-") as tmp:
        _loading(args, Path(tmp))
        _steps(args)
        _latency(args, Path(tmp))


if __name__ == "__main__":
    main()
