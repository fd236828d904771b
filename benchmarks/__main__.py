"""Run the benchmark scripts in turn: ``python -m benchmarks [NAME ...]``.

Each script runs in its own Python process from the repository root, with its
default options, and prints its own figures. Names select scripts (``score`` or
``bench_score``). Without names every ``bench_*.py`` of this folder runs, in
alphabetical order. The exit status is 1 if any script failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCHMARK_DIR = Path(__file__).resolve().parent
REPOSITORY_ROOT = BENCHMARK_DIR.parent


def benchmark_scripts() -> list[Path]:
    """Return the benchmark scripts of this folder, sorted by name."""
    return sorted(BENCHMARK_DIR.glob("bench_*.py"))


def select_scripts(names: list[str]) -> list[Path]:
    """Return the scripts that ``names`` select (all when empty), or raise `ValueError`."""
    scripts = benchmark_scripts()
    if not names:
        return scripts
    by_name = {script.stem: script for script in scripts}
    selected = []
    for name in names:
        stem = name if name.startswith("bench_") else f"bench_{name}"
        stem = stem.removesuffix(".py")
        if stem not in by_name:
            known = ", ".join(sorted(s.removeprefix("bench_") for s in by_name))
            raise ValueError(f"unknown benchmark {name!r}: expected one of {known}")
        selected.append(by_name[stem])
    return selected


def main(argv: list[str] | None = None) -> int:
    """Run the selected scripts one after another and return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run, such as score or bench_rl "
                                                 "(default: all)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)

    try:
        scripts = select_scripts(args.names)
    except ValueError as err:
        parser.error(str(err))
    if args.list:
        for script in scripts:
            print(script.stem.removeprefix("bench_"))
        return 0

    failed = []
    for script in scripts:
        print(f"=== {script.relative_to(REPOSITORY_ROOT)}", flush=True)
        start = time.perf_counter()
        status = subprocess.run([sys.executable, str(script)], cwd=REPOSITORY_ROOT).returncode
        seconds = time.perf_counter() - start
        print(f"=== {script.name}: exit status {status}, {seconds:.0f} s\n", flush=True)
        if status != 0:
            failed.append(script.name)

    if failed:
        print(f"{len(failed)} of {len(scripts)} benchmarks failed: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
