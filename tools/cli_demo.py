"""``sleepnas demo``: the whole job on a synthetic cohort, from search to a scored night."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path), default="demo-output",
                required=False)
@click.option("--quick", is_flag=True,
              help="A couple of minutes: 5 short recordings and one epoch of search and training, "
                   "instead of about 15 minutes on 2 CPU cores.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the cohort, the split, the search and the trainings.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache of the window store and the latency table [default: $SLEEPNAS_CACHE "
                   "or ~/.cache/sleepnas].")
def demo(out_dir: Path, quick: bool, seed: int, cache_dir: Path | None) -> None:
    """Run the demo job into OUT_DIR [default: demo-output].

    Synthesizes a cohort in the Sleep-EDF layout, builds the latency table, runs a
    hardware-aware DARTS search with the small preset, trains the winner and the
    TinySleepNet reference, exports both to ONNX (and the winner in INT8), scores a
    held-out night with a plot, benchmarks the models, and prints a report. The signals
    are synthetic, so the accuracy says nothing about real recordings.
    """
    from sleepnas.tools.demo import format_report, run_demo

    report = run_demo(out_dir, quick=quick, seed=seed, cache_dir=cache_dir)
    click.echo("\n=== sleepnas demo report ===\n")
    click.echo(format_report(report))
