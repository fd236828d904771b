"""``sleepnas evaluate``: price and score a genotype without training it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

logger = logging.getLogger(__name__)

#: Names of `sleepnas.search.proxies.PROXY_NAMES`, spelled out so that listing the
#: commands does not import torch.
PROXY_CHOICES: tuple[str, ...] = ("snip", "grasp", "grad_norm", "synflow", "fisher", "jacob_cov")


@click.command()
@click.argument("genotype", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--preset", type=click.Choice(["default", "small"]), default="default", show_default=True,
              help="Network preset the genotype is built into.")
@click.option("--init-channels", type=click.IntRange(min=2), default=None,
              help="Channels of the first cells; default from the preset.")
@click.option("--num-cells", type=click.IntRange(min=1), default=None,
              help="Cells of the network; default from the preset.")
@click.option("--num-nodes", type=click.IntRange(min=1), default=None,
              help="Intermediate nodes per cell; default from the preset (must match the genotype).")
@click.option("--scheme", type=click.Choice(["aasm5", "rk7"]), default="aasm5", show_default=True,
              help="Stage scheme; sets the number of classes (5 or 7).")
@click.option("--channels", default=None,
              help="Comma-separated input channel names the genotype was searched with.  "
                   "[default: the 7 Sleep-EDF cassette signals]")
@click.option("--input-length", type=click.IntRange(min=32), default=3000, show_default=True,
              help="Samples per 30-s window at 100 Hz.")
@click.option("--latency-table", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Latency table (JSON) for the predicted latency; default this machine's cached "
                   "table, if any.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="onnxruntime threads for the measured latency and the cached table.")
@click.option("--no-measure", is_flag=True,
              help="Do not export and time the network on this machine.")
@click.option("--data-path", type=click.Path(exists=True, path_type=Path), default=None,
              help="Recordings to draw the proxies' mini-batch from; default seeded random windows.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache folder of the window store; default $SLEEPNAS_CACHE or ~/.cache/sleepnas.")
@click.option("--batch-size", type=click.IntRange(min=2), default=16, show_default=True,
              help="Windows in the proxies' mini-batch.")
@click.option("--proxies", "proxy_names", type=click.Choice(PROXY_CHOICES), multiple=True,
              help="Proxy to compute (repeat the option for several); default all six.")
@click.option("--no-proxies", is_flag=True, help="Skip the zero-cost proxies.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the network weights and of the mini-batch sample.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def evaluate(genotype: Path, preset: str, init_channels: int | None, num_cells: int | None,
             num_nodes: int | None, scheme: str, channels: str | None, input_length: int,
             latency_table: Path | None, threads: int,
             no_measure: bool, data_path: Path | None, cache_dir: Path | None, batch_size: int,
             proxy_names: tuple[str, ...], no_proxies: bool, seed: int, as_json: bool) -> None:
    """Report params, FLOPs, predicted and measured latency and zero-cost proxies of GENOTYPE.

    GENOTYPE is a genotype JSON file, as a search writes it. The proxies (SNIP,
    GraSP, grad_norm, synflow, fisher, jacob_cov) score the untrained network on one
    mini-batch.
    """
    from sleepnas.search.evaluator import data_batch, evaluate_genotype, format_report
    from sleepnas.search.genotype import Genotype
    from sleepnas.search.network import network_config

    from sleepnas.runtime.channels import parse_channels
    from sleepnas.runtime.spec import CASSETTE_CHANNELS

    names = parse_channels(channels) if channels is not None else CASSETTE_CHANNELS
    n_classes = 7 if scheme == "rk7" else 5
    config = network_config(preset, init_channels=init_channels, num_cells=num_cells,
                            num_nodes=num_nodes, n_classes=n_classes, in_channels=len(names),
                            n_times=input_length)
    loaded = Genotype.load(genotype, num_nodes=config.num_nodes, ops=config.ops)

    proxies = () if no_proxies else (proxy_names or PROXY_CHOICES)
    inputs = None
    if data_path is not None and proxies:
        inputs = data_batch(data_path, config, batch_size, seed, scheme=scheme, cache_dir=cache_dir,
                            channels=names)

    report = evaluate_genotype(loaded, config, latency_table=latency_table, measure=not no_measure,
                               threads=threads, inputs=inputs, batch_size=batch_size, seed=seed,
                               proxies=proxies)
    report["genotype"] = str(genotype)
    if as_json:
        click.echo(json.dumps(report, indent=2, allow_nan=True))
    else:
        click.echo(format_report(report, loaded, str(genotype)), nl=False)
