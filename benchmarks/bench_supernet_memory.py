"""Benchmark the peak memory and time of one supernet step beside a discrete network's.

Each case runs in a fresh Python process, so its peak resident set size (``ru_maxrss``,
Linux, in MiB) covers that case alone. A case builds the model, runs one forward pass
and one backward pass of the cross-entropy loss on a random batch, and reports

- ``built``: the peak after building the model (torch, the weights),
- ``step``: the peak after the forward and backward pass,
- the wall time of the forward and of the backward pass.

The reference in the same run is the discrete network of a random genotype at the same
batch size. Supernet cases: plain DARTS mixed ops (``K=1``), PC-DARTS partial channels
(``K=2``, ``K=4``) and ``K=1`` with gradient checkpointing of the cells. No optimizer
step is taken, so Adam or SGD state (one or two copies of the weights) comes on top.

Run from the repository root::

    python benchmarks/bench_supernet_memory.py [--preset default] [--batch-size 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_CASE = r"""
import json, resource, sys, time
import torch
import torch.nn.functional as F
from sleepnas.search.genotype import random_genotype
from sleepnas.search.network import Network, network_config
from sleepnas.search.supernet import Supernet

preset, batch_size, threads, kind, k, checkpoint = sys.argv[1:7]
torch.set_num_threads(int(threads))
torch.manual_seed(0)
config = network_config(preset)
if kind == "network":
    model = Network(config, random_genotype(config.ops, config.num_nodes, seed=0))
else:
    model = Supernet(config, partial_channels=int(k), checkpoint_cells=checkpoint == "1")
model.train()
weights = sum(p.numel() for p in model.parameters())
built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
x = torch.randn(int(batch_size), config.in_channels, config.n_times)
y = torch.randint(0, config.n_classes, (int(batch_size),))
start = time.perf_counter()
loss = F.cross_entropy(model(x), y)
forward_s = time.perf_counter() - start
start = time.perf_counter()
loss.backward()
backward_s = time.perf_counter() - start
step = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"weights": weights, "built": built, "step": step,
                  "forward_s": forward_s, "backward_s": backward_s}))
"""

CASES = [
    ("discrete network (reference)", "network", 1, 0),
    ("supernet K=1", "supernet", 1, 0),
    ("supernet K=1, checkpointed cells", "supernet", 1, 1),
    ("supernet K=2", "supernet", 2, 0),
    ("supernet K=4", "supernet", 4, 0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default", choices=["default", "small"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()

    print(f"preset {args.preset}, batch {args.batch_size}, {args.threads} torch thread(s); "
          "peak RSS in MiB, times in s")
    print(f"{'case':34s} {'weights':>12s} {'built':>8s} {'step':>8s} {'forward':>8s} {'backward':>9s}")
    for name, kind, k, checkpoint in CASES:
        out = subprocess.run([sys.executable, "-c", _CASE, args.preset, str(args.batch_size),
                              str(args.threads), kind, str(k), str(checkpoint)],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{name:34s} {r['weights']:>12,d} {r['built']:>8.0f} {r['step']:>8.0f} "
              f"{r['forward_s']:>8.1f} {r['backward_s']:>9.1f}")


if __name__ == "__main__":
    main()
