"""``sleepnas bench``: latency, throughput, memory and size of ONNX models on this machine.

Imports no torch unless ``--torch`` is given, so it runs on a device with the base install.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from sleepnas.runtime.errors import SleepnasError


def _parse_counts(name: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise SleepnasError(f"invalid {name} {text!r}: expected integers >= 1 separated by commas, "
                            f"such as 1,2")
    return values


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--threads", default="1", show_default=True,
              help="Intra-op thread counts to measure, separated by commas.")
@click.option("--batch-sizes", default="1,8,64", show_default=True,
              help="Windows per run, separated by commas: batch 1 gives the latency per window, "
                   "larger batches the throughput.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True,
              help="Untimed runs before each measurement.")
@click.option("--repeats", type=click.IntRange(min=1), default=100, show_default=True,
              help="Timed runs per measurement; p50, p90 and p99 are over these.")
@click.option("--compare", "compare", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Another ONNX model measured in the same run, such as the INT8 model or a baseline; "
                   "more models may follow as arguments.")
@click.option("--torch", "torch_run", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory of the first model: also time its torch model in eager mode (needs torch).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random input windows.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list with one record per model, thread count and batch size.")
def bench(models: tuple[Path, ...], threads: str, batch_sizes: str, warmup: int, repeats: int,
          compare: tuple[Path, ...], torch_run: Path | None, seed: int, as_json: bool) -> None:
    """Measure MODELS (ONNX files from `sleepnas export`): cold start, p50/p90/p99 latency,
    throughput, peak memory and size. The first model is the reference of the ratios.

    Each measurement runs in a fresh process; its peak memory includes the Python
    interpreter and onnxruntime (or torch) themselves.
    """
    from sleepnas.tools.bench import bench_models, format_table

    records = bench_models([models[0], *compare, *models[1:]], threads=_parse_counts("--threads", threads),
                           batch_sizes=_parse_counts("--batch-sizes", batch_sizes), warmup=warmup,
                           repeats=repeats, torch_run=torch_run, seed=seed)
    if as_json:
        click.echo(json.dumps(records, indent=2))
    else:
        click.echo(format_table(records))
