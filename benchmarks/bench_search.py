"""Benchmark one DARTS search step, first and second order, beside a training step of the derived network.

A search step is what `sleepnas search` does per mini-batch: one arch step
(`sleepnas.search.darts.Architect`, Adam on the arch parameters) and one SGD step of the
weights with gradient clipping. The second-order arch step adds the virtual weight step
and the finite-difference Hessian-vector product. The reference in the same run is one SGD step of
the discrete network derived from the supernet (the network the final training trains),
at the same batch size.

Each case runs in a fresh Python process, so its peak resident set size (``ru_maxrss``,
Linux, in MiB) covers that case alone: torch, the model, the optimizer state and the
activations. On CUDA the peak of ``torch.cuda.max_memory_allocated`` is reported too.
Each case takes ``--warmup`` untimed steps (default 1), then the median of ``--repeats``
timed steps.

Run from the repository root::

    python benchmarks/bench_search.py [--device cpu] [--threads 2] [--repeats 2] [--warmup 1]
        [--presets small default] [--batch-size 32] [--cases 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

_CASE = r"""
import json, resource, statistics, sys, time
import torch
from torch import nn
from sleepnas.search.darts import Architect, clip_weight_gradients
from sleepnas.search.network import Network, network_config
from sleepnas.search.supernet import Supernet

preset, batch_size, threads, kind, k, checkpoint, device, repeats, warmup = sys.argv[1:10]
batch_size, repeats, warmup, k = int(batch_size), int(repeats), int(warmup), int(k)
torch.set_num_threads(int(threads))
torch.manual_seed(0)
device = torch.device(device)
config = network_config(preset)
supernet = Supernet(config, partial_channels=k, checkpoint_cells=checkpoint == "1").to(device)
criterion = nn.CrossEntropyLoss()

def batch():
    x = torch.randn(batch_size, config.in_channels, config.n_times, device=device)
    return x, torch.randint(0, config.n_classes, (batch_size,), device=device)

if kind == "network":
    model = Network(config, supernet.genotype()).to(device)
    del supernet
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    def step():
        x, y = batch()
        optimizer.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
else:
    model = supernet.train()
    optimizer = torch.optim.SGD(model.weights(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    architect = Architect(model, criterion, unrolled=kind == "second")
    def step():
        train_batch, arch_batch = batch(), batch()
        architect.step(train_batch, arch_batch, 0.025, optimizer)
        optimizer.zero_grad(set_to_none=True)
        criterion(model(train_batch[0]), train_batch[1]).backward()
        clip_weight_gradients(model.weights(), 5.0)
        optimizer.step()

def timed():
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start

for _ in range(warmup):
    timed()
times = [timed() for _ in range(repeats)]
result = {"weights": sum(p.numel() for p in model.parameters()),
          "step_s": statistics.median(times),
          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
if device.type == "cuda":
    result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps(result))
"""

#: (label, kind, partial channels K, checkpointed cells)
CASES = [
    ("derived network, training step (reference)", "network", 1, 0),
    ("search step, first order", "first", 1, 0),
    ("search step, second order", "second", 1, 0),
    ("search step, first order, K=4", "first", 4, 0),
    ("search step, first order, checkpointed cells", "first", 1, 1),
    ("search step, second order, checkpointed cells", "second", 1, 1),
]


def _run_case(args: argparse.Namespace, preset: str, kind: str, k: int, checkpoint: int) -> dict | str:
    command = [sys.executable, "-c", _CASE, preset, str(args.batch_size), str(args.threads), kind,
               str(k), str(checkpoint), args.device, str(args.repeats), str(args.warmup)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        stderr = done.stderr or ""
        if done.returncode < 0 or "out of memory" in stderr:
            return f"out of memory or killed (exit {done.returncode})"
        lines = stderr.strip().splitlines()
        if lines:
            return lines[-1]
        return f"exit {done.returncode}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["small", "default"], choices=["small", "default"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per case before the timed ones")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--cases", nargs="+", type=int, default=None,
                        help="indices of the cases to run (default all): " +
                             ", ".join(f"{i} = {c[0]}" for i, c in enumerate(CASES)))
    args = parser.parse_args()

    print(f"{platform.processor() or platform.machine()}, device {args.device}, batch {args.batch_size}, "
          f"{args.threads} torch thread(s), median of {args.repeats} step(s) after {args.warmup} "
          "warm-up step(s); "
          "peak memory in MiB")
    header = f"{'preset':8s} {'case':46s} {'weights':>11s} {'step s':>8s} {'peak RSS':>9s}"
    print(header + (f" {'peak CUDA':>10s}" if args.device == "cuda" else ""))
    for preset in args.presets:
        for index, (label, kind, k, checkpoint) in enumerate(CASES):
            if args.cases is not None and index not in args.cases:
                continue
            result = _run_case(args, preset, kind, k, checkpoint)
            if isinstance(result, str):
                print(f"{preset:8s} {label:46s} failed: {result}", flush=True)
                continue
            line = (f"{preset:8s} {label:46s} {result['weights']:>11,d} {result['step_s']:>8.2f} "
                    f"{result['peak_rss_mib']:>9.0f}")
            if "peak_cuda_mib" in result:
                line += f" {result['peak_cuda_mib']:>10.0f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
