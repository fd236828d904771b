"""``sleepnas cost``: build, measure and check the latency table of a network.

``export-ops``, ``build`` and ``check`` need torch; ``measure`` runs with the base
install only, so the table can be measured on a device without torch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

logger = logging.getLogger(__name__)

_PRESET_HELP = "Network preset (`default` or `small`); the options below override its shape."
_THREADS_HELP = "onnxruntime intra-op threads the latencies are measured with."
_CLOCK_HELP = ("Clock of the timed runs: `wall` (the latency a user sees) or `cpu` (CPU time of "
               "the calling thread, steadier on a busy shared machine; needs --threads 1).")


def _network_options(function):
    """Add --preset and the options that override a preset's network shape."""
    options = [
        click.option("--preset", default="default", show_default=True, help=_PRESET_HELP),
        click.option("--init-channels", type=int, default=None,
                     help="Channels of the first cells (even); default from the preset."),
        click.option("--num-cells", type=int, default=None,
                     help="Cells in the network; default from the preset."),
        click.option("--num-nodes", type=int, default=None,
                     help="Intermediate nodes per cell; default from the preset."),
        click.option("--ops", default=None,
                     help="Comma-separated op subset, such as conv_3x1,lstm; default: all 14 ops."),
        click.option("--channels", default=None,
                     help="Comma-separated input channel names of the model; only their number "
                          "shapes the network.  [default: the 7 Sleep-EDF cassette signals]"),
        click.option("--input-length", type=click.IntRange(min=32), default=3000,
                     show_default=True, help="Samples per 30-s window at 100 Hz."),
        click.option("--scheme", type=click.Choice(["aasm5", "rk7"]), default="aasm5",
                     show_default=True, help="Stage scheme; it sets the classifier's outputs."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _network_config(preset: str, init_channels: int | None, num_cells: int | None,
                    num_nodes: int | None, ops: str | None, channels: str | None = None,
                    input_length: int = 3000, scheme: str = "aasm5"):
    from sleepnas.runtime.channels import parse_channels
    from sleepnas.runtime.spec import CASSETTE_CHANNELS
    from sleepnas.runtime.stages import get_scheme
    from sleepnas.search.network import network_config
    from sleepnas.search.ops import check_ops

    names = parse_channels(channels) if channels is not None else CASSETTE_CHANNELS
    return network_config(preset, init_channels=init_channels, num_cells=num_cells,
                          num_nodes=num_nodes, ops=check_ops(ops) if ops is not None else None,
                          in_channels=len(names), n_times=input_length,
                          n_classes=get_scheme(scheme).n_classes)


def _runs_options(function):
    """Add --warmup and --repeats, the runs of each timed model."""
    function = click.option("--repeats", type=click.IntRange(min=1), default=100,
                            show_default=True,
                            help="Timed runs per model; the latency is their median.")(function)
    return click.option("--warmup", type=click.IntRange(min=0), default=20, show_default=True,
                        help="Untimed runs per model.")(function)


def _calibration_option(function):
    return click.option("--calibration-samples", type=click.IntRange(min=0), default=8,
                        show_default=True, help="Random whole networks exported and measured "
                        "too, to fit the correction of the prediction.")(function)


def _clock_option(function):
    return click.option("--clock", type=click.Choice(["wall", "cpu"]), default="wall",
                        show_default=True, help=_CLOCK_HELP)(function)


@click.group()
def cost() -> None:
    """Latency table and cost model of a network (FLOPs and latency per op)."""


@cost.command("export-ops")
@_network_options
@_calibration_option
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the calibration genotypes.")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def export_ops(preset: str, init_channels: int | None, num_cells: int | None,
               num_nodes: int | None, ops: str | None, channels: str | None, input_length: int,
               scheme: str, calibration_samples: int, seed: int,
               out_dir: Path) -> None:
    """Write every op model of a network to OUT_DIR as ONNX files, with a manifest.

    Copy OUT_DIR to the device and run `sleepnas cost measure` there.
    """
    from sleepnas.search.latency import export_op_models

    config = _network_config(preset, init_channels, num_cells, num_nodes, ops, channels,
                             input_length, scheme)
    manifest = export_op_models(config, out_dir, calibration_samples=calibration_samples,
                                seed=seed)
    click.echo(f"wrote {manifest}")


@cost.command()
@click.argument("op_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Latency table to write (JSON).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help=_THREADS_HELP)
@_runs_options
@_clock_option
def measure(op_dir: Path, output: Path, threads: int, warmup: int, repeats: int,
            clock: str) -> None:
    """Time the op models in OP_DIR (from `cost export-ops`) and write the latency table.

    Needs only the base install (no torch).
    """
    from sleepnas.runtime.timing import measure_op_dir
    from sleepnas.runtime.utils import atomic_write_json

    table = measure_op_dir(op_dir, threads, warmup=warmup, repeats=repeats, clock=clock)
    atomic_write_json(output, table)
    click.echo(f"wrote {output}: {len(table['latency_ms'])} entries measured on "
               f"{table['device']} with {threads} thread(s)")


@cost.command()
@_network_options
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help=_THREADS_HELP)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache folder; default $SLEEPNAS_CACHE or ~/.cache/sleepnas.")
@click.option("--rebuild", is_flag=True, help="Measure every entry again, ignoring the cache.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table to this file.")
@_calibration_option
@_runs_options
@_clock_option
def build(preset: str, init_channels: int | None, num_cells: int | None, num_nodes: int | None,
          ops: str | None, channels: str | None, input_length: int, scheme: str, threads: int,
          cache_dir: Path | None, rebuild: bool,
          output: Path | None, calibration_samples: int, warmup: int, repeats: int,
          clock: str) -> None:
    """Export and time the op models of a network on this machine (both halves at once).

    The table is cached under the cache folder; only missing entries are measured.
    """
    from sleepnas.search.latency import build_latency_table

    config = _network_config(preset, init_channels, num_cells, num_nodes, ops, channels,
                             input_length, scheme)
    table, path = build_latency_table(config, threads=threads, cache_dir=cache_dir,
                                      rebuild=rebuild, calibration_samples=calibration_samples,
                                      warmup=warmup, repeats=repeats, clock=clock)
    if output is not None:
        table.save(output)
    click.echo(f"latency table {path}: {len(table)} entries")


@cost.command()
@click.option("--samples", type=click.IntRange(min=2), default=30, show_default=True,
              help="Random genotypes to export, measure and compare with the prediction.")
@_network_options
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help=_THREADS_HELP)
@click.option("--seed", type=int, default=1000, show_default=True,
              help="Seed of the sampled genotypes.")
@click.option("--latency-table", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Latency table to check, measured on this machine; its thread "
              "count and clock then replace --threads and --clock. Default: build or reuse the "
              "cached table.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache folder; default $SLEEPNAS_CACHE or ~/.cache/sleepnas.")
@_runs_options
@_clock_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check(samples: int, preset: str, init_channels: int | None, num_cells: int | None,
          num_nodes: int | None, ops: str | None, channels: str | None, input_length: int,
          scheme: str, threads: int, seed: int,
          latency_table: Path | None, cache_dir: Path | None, warmup: int, repeats: int,
          clock: str, as_json: bool) -> None:
    """Compare predicted and measured latency of random genotypes of a network.

    Reports the Spearman rank correlation and the median absolute percentage error.
    """
    from sleepnas.search.cost import LatencyTable
    from sleepnas.search.latency import build_latency_table, check_cost_model

    config = _network_config(preset, init_channels, num_cells, num_nodes, ops, channels,
                             input_length, scheme)
    if latency_table is not None:
        table = LatencyTable.load(latency_table)
    else:
        table, _ = build_latency_table(config, threads=threads, cache_dir=cache_dir,
                                       warmup=warmup, repeats=repeats, clock=clock)
    report = check_cost_model(config, table, samples=samples, seed=seed, warmup=warmup,
                              repeats=repeats)

    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"samples:                      {report['samples']}")
    click.echo(f"Spearman rank correlation:    {report['spearman']:.3f}")
    click.echo(f"median absolute error:        {report['median_abs_pct_error']:.1f} %")
    click.echo(f"measured latency (median):    {report['measured_median_ms']:.3f} ms")
