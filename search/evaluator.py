"""Evaluate a genotype without training it: size, FLOPs, latency and zero-cost proxies."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sleepnas.runtime.errors import SleepnasError
from sleepnas.search.flops import count_flops, count_params
from sleepnas.search.genotype import Genotype
from sleepnas.search.network import Network, NetworkConfig
from sleepnas.search.proxies import PROXY_NAMES, compute_proxies

logger = logging.getLogger(__name__)


def random_batch(config: NetworkConfig, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return a seeded batch of standard-normal windows and uniformly drawn stage labels."""
    generator = torch.Generator().manual_seed(seed)
    windows = torch.randn(batch_size, config.in_channels, config.n_times, generator=generator)
    labels = torch.randint(0, config.n_classes, (batch_size,), generator=generator)
    return windows, labels


def data_batch(data_path: str | os.PathLike, config: NetworkConfig, batch_size: int, seed: int, *,
               scheme: str = "aasm5", cache_dir: str | os.PathLike | None = None,
               channels: tuple[str, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return a seeded sample of labelled windows of the recordings under ``data_path``.

    The windows are normalized with a scale fitted on the sample itself, because no
    training split exists yet. The proxies need realistic input, not a held-out
    evaluation, so this is enough.
    """
    from sleepnas.runtime.spec import WindowSpec
    from sleepnas.runtime.store import load_cohort

    spec = WindowSpec(scheme=scheme) if channels is None else WindowSpec(
        channels=channels, scheme=scheme, window_s=config.n_times / 100.0)
    if (spec.n_chans, spec.n_times) != (config.in_channels, config.n_times):
        raise SleepnasError(f"the network takes {config.in_channels} x {config.n_times} windows but the "
                            f"recordings give {spec.n_chans} x {spec.n_times}")
    cohort = load_cohort(data_path, spec, cache_dir=cache_dir)
    if len(cohort.labels) < batch_size:
        raise SleepnasError(f"{data_path} has {len(cohort.labels)} labelled windows: the proxies need "
                            f"--batch-size {batch_size}; lower it or add recordings")
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(len(cohort.labels), size=batch_size, replace=False))
    raw = np.asarray(cohort.windows[index], dtype=np.float32)
    fitted = spec.fit_scale(raw)
    windows = torch.from_numpy(np.ascontiguousarray(fitted.normalize(raw), dtype=np.float32))
    labels = torch.from_numpy(np.asarray(cohort.labels[index], dtype=np.int64))
    return windows, labels


def predicted_latency_ms(config: NetworkConfig, genotype: Genotype,
                         latency_table: str | os.PathLike | None, threads: int) -> tuple[float | None, str]:
    """Predict the latency of ``genotype`` from a latency table.

    Returns ``(milliseconds, source)``. Without ``latency_table``, this machine's
    cached table at ``threads`` threads is used if it exists and has every entry.
    Otherwise the latency is ``None`` and ``source`` gives the reason.
    """
    from sleepnas.search.cost import CostModel, LatencyTable
    from sleepnas.search.latency import table_path

    if latency_table is not None:
        table = LatencyTable.load(latency_table)
        return CostModel(config, table).genotype_latency_ms(genotype), str(latency_table)

    path = table_path(threads)
    if not path.exists():
        return None, f"no latency table (pass --latency-table, or run `sleepnas cost build`); none cached at {path}"
    try:
        table = LatencyTable.load(path)
        return CostModel(config, table).genotype_latency_ms(genotype), str(path)
    except SleepnasError as err:
        return None, f"the cached table {path} cannot price this network: {err}"


def measured_latency_ms(config: NetworkConfig, genotype: Genotype, threads: int, *,
                        warmup: int = 10, repeats: int = 50) -> float:
    """Export the genotype's network to ONNX and return its median latency at batch 1, in ms."""
    from sleepnas.runtime.timing import time_model
    from sleepnas.search.latency import export_network

    with tempfile.TemporaryDirectory(prefix="sleepnas-evaluate-") as tmp:
        path = Path(tmp) / "network.onnx"
        export_network(config, genotype, path)
        return time_model(path, threads=threads, warmup=warmup, repeats=repeats).p50_ms


def evaluate_genotype(genotype: Genotype, config: NetworkConfig, *,
                      latency_table: str | os.PathLike | None = None, measure: bool = True,
                      threads: int = 1, inputs: tuple[torch.Tensor, torch.Tensor] | None = None,
                      batch_size: int = 16, seed: int = 0,
                      proxies: Sequence[str] = PROXY_NAMES) -> dict[str, Any]:
    """Report params, FLOPs, predicted and measured latency and zero-cost proxies.

    Parameters
    ----------
    genotype : Genotype
        The architecture; it must fit ``config``.
    config : NetworkConfig
        The network it is built into.
    latency_table : path-like, optional
        Latency table for the prediction (see `predicted_latency_ms`).
    measure : bool
        Export the network and time it with onnxruntime on this machine.
    threads : int
        onnxruntime threads, for the measurement and the cached table.
    inputs : (windows, labels), optional
        The mini-batch of the proxies; default a seeded random batch.
    batch_size, seed : int
        Size and seed of the random batch, and seed of the network's weights.
    proxies : sequence of str
        Proxies to compute (from `PROXY_NAMES`); empty for none.

    Returns
    -------
    dict
        Keys ``params``, ``flops``, ``mflops``, ``latency_ms`` (``predicted``,
        ``predicted_source``, ``measured``, ``threads``), ``proxies``,
        ``proxy_input`` (``"random"`` or ``"data"``) and ``network``.
    """
    genotype.check(num_nodes=config.num_nodes, ops=config.ops)
    torch.manual_seed(seed)
    network = Network(config, genotype)

    flops = count_flops(network, (1, config.in_channels, config.n_times))
    predicted, source = predicted_latency_ms(config, genotype, latency_table, threads)
    measured = measured_latency_ms(config, genotype, threads) if measure else None

    proxy_input = "random" if inputs is None else "data"
    if inputs is None:
        inputs = random_batch(config, batch_size, seed)
    scores = compute_proxies(network, inputs[0], inputs[1], proxies, seed=seed) if proxies else {}

    return {
        "params": count_params(network),
        "flops": flops,
        "mflops": flops / 1e6,
        "latency_ms": {"predicted": predicted, "predicted_source": source,
                       "measured": measured, "threads": threads},
        "proxies": scores,
        "proxy_input": proxy_input,
        "proxy_batch_size": int(inputs[0].shape[0]),
        "network": config.to_dict(),
    }


def format_report(report: dict[str, Any], genotype: Genotype, source: str) -> str:
    """Format an `evaluate_genotype` report as readable text."""
    latency = report["latency_ms"]
    predicted = (f"{latency['predicted']:.3f} ms ({latency['predicted_source']})"
                 if latency["predicted"] is not None else f"unknown: {latency['predicted_source']}")
    measured = f"{latency['measured']:.3f} ms" if latency["measured"] is not None else "not measured"
    network = report["network"]
    lines = [
        f"Genotype {source}: {network['num_cells']} cells, {network['num_nodes']} nodes, "
        f"{network['init_channels']} initial channels",
        f"Params: {report['params']:,}",
        f"FLOPs: {report['flops']:,} ({report['mflops']:.2f} MFLOPs; one multiply-add = 1 FLOP)",
        f"Predicted latency: {predicted}",
        f"Measured latency: {measured} (median, batch 1, {latency['threads']} thread(s), onnxruntime)",
    ]
    if report["proxies"]:
        lines.append(f"Zero-cost proxies (on {report['proxy_batch_size']} "
                     f"{'seeded random windows' if report['proxy_input'] == 'random' else 'windows of the recordings'}):")
        lines += [f"  {name}: {value:.6g}" for name, value in report["proxies"].items()]
    lines.append(genotype.pretty().rstrip())
    return "\n".join(lines) + "\n"
