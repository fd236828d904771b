"""Benchmark the RL search: children evaluated per hour with 1 and 2 workers, and proxy screening.

Runs the same tiny RL search (``small`` preset with fewer channels, a synthetic cohort
of 4 subjects, 1 training epoch per child on a few mini-batches, no final training)

- with ``--executor local`` and 1 worker (the reference: serial, in this process), then
  with 2 worker processes (1 torch thread each), and prints the children trained per
  hour of search time and whether the two histories are equal;
- with ``--proxy-screen synflow`` beside the same search without it, and prints the
  children trained, the search time, the time saved and whether the winner changed.

Before the timed searches, the window store is built and the FLOPs of every op at every
shape are counted (both are cached), so that no search pays for them. Children per hour
counts trained children only (not cached or screened ones). The
figures depend on the machine's free cores; on a machine whose cores other work
shares, the 2-worker speed-up is a lower bound.

Run from the repository root::

    python -m benchmarks rl
    python benchmarks/bench_rl.py [--iterations 5] [--children 2] [--max-batches 20]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from sleepnas.search.rl import RLSearchConfig, read_history
from sleepnas.search.rl_child import DIVERGED, OK
from sleepnas.search.strategy import make_strategy
from sleepnas.tools.synth import synthesize_cohort


def _search(args: argparse.Namespace, folder: Path, name: str, **changes) -> dict:
    config = RLSearchConfig(
        data_path=str(folder / "data"), cache_dir=str(folder / "cache"), save_dir=str(folder / name),
        preset="small", init_channels=args.init_channels, batch_size=16, final_train_epochs=0,
        device="cpu", print_freq=0, seed=args.seed, num_iterations=args.iterations,
        children_per_update=args.children, eval_epochs=1, child_max_batches=args.max_batches, **changes)
    result = make_strategy(config, measure_latency=False).run()
    history = read_history(folder / name)
    trained = [r for r in history if r["status"] in (OK, DIVERGED) and not r["cached"]]
    search = json.loads((folder / name / "search.json").read_text())
    return {"seconds": search["search_seconds"], "trained": len(trained), "children": len(history),
            "genotype": result.genotype.to_dict(), "updates": search["history"],
            "steady_seconds": sum(u["seconds"] for u in search["history"][1:]),
            "steady_trained": len([r for r in trained if r["iteration"] > 1]),
            "history": [{k: v for k, v in r.items() if k not in ("train_seconds", "eval_seconds")}
                        for r in history]}


def _warm_up(args: argparse.Namespace, folder: Path) -> float:
    from sleepnas.runtime.store import load_cohort
    from sleepnas.search.cost import CostModel

    started = time.perf_counter()
    config = RLSearchConfig(data_path=str(folder / "data"), preset="small", init_channels=args.init_channels)
    load_cohort(config.data_path, config.window_spec(), cache_dir=str(folder / "cache"))
    CostModel(config.network_config()).op_cost_tensors()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5, help="controller updates per search")
    parser.add_argument("--children", type=int, default=2, help="children per update")
    parser.add_argument("--max-batches", type=int, default=20, help="mini-batches per child epoch")
    parser.add_argument("--init-channels", type=int, default=8, help="channels of the first cells")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("SLEEPNAS_PROGRESS", "0")

    with tempfile.TemporaryDirectory(prefix="sleepnas-bench-rl-") as tmp:
        folder = Path(tmp)
        synthesize_cohort(folder / "data", subjects=4, nights=1, seed=0, hours=1.0)
        warmup_seconds = _warm_up(args, folder)

        print(f"RL search: {args.iterations} updates x {args.children} children, 1 epoch of at most "
              f"{args.max_batches} mini-batches per child, small preset with {args.init_channels} channels")
        print(f"warm-up (window store, FLOPs of every op shape): {warmup_seconds:.1f} s, not counted")
        print(f"{'executor':<28} {'trained':>8} {'search s':>9} {'children/h':>11} "
              f"{'after update 1':>15}")
        runs = {}
        for workers in (1, 2):
            run = _search(args, folder, f"workers{workers}", workers=workers)
            runs[workers] = run
            label = "serial (reference)" if workers == 1 else f"{workers} worker processes"
            steady = 3600 * run["steady_trained"] / max(run["steady_seconds"], 1e-9)
            print(f"{label:<28} {run['trained']:>8} {run['seconds']:>9.1f} "
                  f"{3600 * run['trained'] / run['seconds']:>11.0f} {steady:>15.0f}")
        print("(after update 1: children per hour without the first update, which starts the workers)")
        print(f"2-worker speed-up: {runs[1]['seconds'] / runs[2]['seconds']:.2f}x overall, "
              f"{runs[1]['steady_seconds'] / max(runs[2]['steady_seconds'], 1e-9):.2f}x after update 1; "
              f"same history: {runs[1]['history'] == runs[2]['history']}")

        screened = _search(args, folder, "screened", proxy_screen="synflow")
        plain = runs[1]
        totals = screened["updates"][-1]
        print()
        print(f"{'proxy screening':<28} {'trained':>8} {'search s':>9}")
        print(f"{'none (reference)':<28} {plain['trained']:>8} {plain['seconds']:>9.1f}")
        print(f"{'synflow, keep 50 %':<28} {screened['trained']:>8} {screened['seconds']:>9.1f}")
        print(f"time saved: {plain['seconds'] - screened['seconds']:.1f} s measured; "
              f"{totals['estimated_seconds_saved']:.1f} s estimated by the search "
              f"({totals['screened_children']} children screened out, {totals['proxy_seconds']:.1f} s of proxies)")
        print(f"winner changed by screening: {screened['genotype'] != plain['genotype']}")


if __name__ == "__main__":
    main()
