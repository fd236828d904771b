"""The latency table of a network: export its op models, time them, cache the table, check it.

Each op at each shape it takes in the network, and each fixed part (stem, cell
preprocessing, head), is exported alone to ONNX at batch 1 (`export_op_models`).
`sleepnas.runtime.timing.measure_op_dir` times them without torch, possibly on
another device. `build_latency_table` does both on this machine and caches the table
under ``<cache>/latency/``, keyed by device, onnxruntime version and thread count,
measuring only the entries the cached table lacks.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.timing import (MANIFEST_FORMAT, MANIFEST_NAME, check_clock, device_name,
                                     measure_op_dir, table_key, time_model)
from sleepnas.runtime.utils import atomic_write_json, cache_dir as default_cache_dir, progress
from sleepnas.search.cost import CostModel, LatencyTable, network_id, op_key, part_key
from sleepnas.search.genotype import Genotype, random_genotype
from sleepnas.search.network import (Network, NetworkConfig, build_fixed_part,
                                     edge_signatures, fixed_parts)
from sleepnas.search.ops import make_op
from sleepnas.search.onnx_io import export_onnx

logger = logging.getLogger(__name__)

#: Random whole networks exported with the op models, to fit the cost model's correction.
DEFAULT_CALIBRATION_SAMPLES = 8

#: Seed offset of the calibration genotypes, so they differ from those `check_cost_model` draws.
_CALIBRATION_SEED = 7919


@dataclass(frozen=True)
class _OpModel:
    key: str
    build: Any
    input_shape: tuple[int, ...]


def _op_models(config: NetworkConfig) -> list[_OpModel]:
    """List every op model a network's latency table needs, without repeats."""
    models: dict[str, _OpModel] = {}
    for part in fixed_parts(config):
        key = part_key(part, config)
        models.setdefault(key, _OpModel(key, lambda name=part.name: build_fixed_part(config, name),
                                        (1, *part.input_shape)))
    for signature in edge_signatures(config):
        for op in config.ops:
            if op == "zero":
                continue  # zero is never part of a derived network, so it costs nothing
            key = op_key(op, signature.C, signature.L, signature.stride)
            models.setdefault(key, _OpModel(
                key, lambda op=op, s=signature: make_op(op, s.C, s.stride),
                (1, signature.C, signature.L)))
    return list(models.values())


def table_keys(config: NetworkConfig) -> list[str]:
    """Return the keys a latency table needs for ``config``: fixed parts, then every op shape."""
    return [model.key for model in _op_models(config)]


def _file_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in key) + ".onnx"


class _Copy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.0


def export_op_models(config: NetworkConfig, out_dir: str | os.PathLike, *,
                     keys: list[str] | None = None,
                     calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES, seed: int = 0,
                     show_progress: bool | None = None) -> Path:
    """Export the op models of a network as ONNX files, with ``manifest.json``.

    Parameters
    ----------
    config : NetworkConfig
        The network.
    out_dir : path-like
        Folder to write; created if missing. Files of the same names are replaced.
    keys : list of str, optional
        Export only these entries (the gaps of a cached table).
    calibration_samples : int
        Random genotypes of the network exported whole, with the table keys of their
        parts, so the device can fit the correction of the summed prediction.
    seed : int
        Seed of the calibration genotypes.
    show_progress : bool, optional
        Force the progress bar on or off.

    Returns
    -------
    Path
        The manifest.
    """
    if isinstance(calibration_samples, bool) or calibration_samples < 0:
        raise SleepnasError(f"invalid calibration_samples {calibration_samples!r}: "
                            "expected an integer >= 0")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    models = _op_models(config)
    if keys is not None:
        selected = set(keys)
        models = [model for model in models if model.key in selected]

    entries = []
    for model in progress(models, desc="exporting op models", unit="op", enabled=show_progress):
        file = _file_name(model.key)
        export_onnx(model.build(), [torch.randn(*model.input_shape)], out_dir / file)
        entries.append({"key": model.key, "file": file, "input_shape": list(model.input_shape)})

    empty_shape = (1, config.init_channels, 8)
    export_onnx(_Copy(), [torch.randn(*empty_shape)], out_dir / "empty.onnx")

    samples = []
    cost_model = CostModel(config, LatencyTable({}))
    for n in range(calibration_samples):
        genotype = random_genotype(config.ops, config.num_nodes, seed=_CALIBRATION_SEED + seed + n)
        file = f"calibration_{network_id(config)}_{n}.onnx"
        export_network(config, genotype, out_dir / file)
        samples.append({"file": file, "keys": cost_model.part_keys(genotype),
                        "genotype": genotype.to_dict()})

    manifest = {
        "format": MANIFEST_FORMAT,
        "network": config.to_dict(),
        "network_id": network_id(config),
        "empty_model": "empty.onnx",
        "entries": entries,
        "calibrations": [{"network_id": network_id(config), "samples": samples}] if samples else [],
    }
    return atomic_write_json(out_dir / MANIFEST_NAME, manifest)


def export_network(config: NetworkConfig, genotype: Genotype, path: str | os.PathLike,
                   *, seed: int = 0) -> Path:
    """Export the whole network of ``genotype`` (random weights) at batch 1 for timing."""
    torch.manual_seed(seed)
    network = Network(config, genotype).eval()
    example = torch.randn(1, config.in_channels, config.n_times)
    export_onnx(network, [example], path, input_names=["windows"], output_names=["logits"])
    return Path(path)


def table_path(threads: int, cache_dir: str | os.PathLike | None = None,
               clock: str = "wall") -> Path:
    """Return the cache file of this machine's latency table at ``threads`` threads."""
    import onnxruntime

    key = table_key(device_name(), onnxruntime.__version__, threads, clock)
    return default_cache_dir(cache_dir) / "latency" / f"{key}.json"


def _load_cached(path: Path) -> LatencyTable | None:
    if not path.exists():
        return None
    try:
        return LatencyTable.load(path)
    except SleepnasError as err:
        logger.warning("the cached latency table %s is corrupt (%s); measuring it again",
                       path, err)
        return None


def build_latency_table(config: NetworkConfig, *, threads: int = 1,
                        cache_dir: str | os.PathLike | None = None, rebuild: bool = False,
                        calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
                        warmup: int = 20, repeats: int = 100, clock: str = "wall",
                        show_progress: bool | None = None) -> tuple[LatencyTable, Path]:
    """Return this machine's latency table for ``config``, measuring what the cache lacks.

    Parameters
    ----------
    config : NetworkConfig
        The network whose op models must be in the table.
    threads : int
        onnxruntime intra-op threads.
    cache_dir : path-like, optional
        Cache folder (default `sleepnas.runtime.utils.cache_dir`). The table is
        ``<cache>/latency/<device>__ort-<version>__t<threads>.json``; a corrupt file
        there is measured again, with a warning.
    rebuild : bool
        Ignore the cached table and measure every entry.
    calibration_samples : int
        Whole networks measured to fit the correction, unless the cache has them.
    warmup, repeats : int
        Runs per op model.
    clock : {"wall", "cpu"}
        Clock of the timed runs (`sleepnas.runtime.timing.time_session`); ``"cpu"``,
        for a busy shared machine, needs one thread and gets its own cache file.
    show_progress : bool, optional
        Force the progress bars on or off.

    Returns
    -------
    (LatencyTable, Path)
        The table, covering every op model of ``config``, and its cache file.
    """
    check_clock(clock, threads)
    path = table_path(threads, cache_dir, clock)
    cached = None if rebuild else _load_cached(path)
    needed = table_keys(config)
    missing = needed if cached is None else cached.missing(needed)
    calibrate = calibration_samples > 0 and (
        cached is None or cached.calibration(network_id(config)) is None)
    if cached is not None and not missing and not calibrate:
        logger.debug("latency table %s has every entry of network %s", path, network_id(config))
        return cached, path

    logger.info("measuring %d op models%s for the latency table %s", len(missing),
                " and calibration networks" if calibrate else "", path)
    with tempfile.TemporaryDirectory(prefix="sleepnas-ops-") as tmp:
        export_op_models(config, tmp, keys=missing,
                         calibration_samples=calibration_samples if calibrate else 0,
                         show_progress=show_progress)
        measured = LatencyTable.from_dict(
            measure_op_dir(tmp, threads, warmup=warmup, repeats=repeats, clock=clock,
                           show_progress=show_progress), source=f"measured in {tmp}")

    table = measured if cached is None else cached.merge(measured)
    table.save(path)
    return table, path


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def check_cost_model(config: NetworkConfig, table: LatencyTable, *, samples: int = 30,
                     seed: int = 1000, warmup: int = 20, repeats: int = 100,
                     show_progress: bool | None = None) -> dict[str, Any]:
    """Compare the cost model's predicted latency with the measured latency of whole networks.

    Samples ``samples`` random genotypes, exports each network to ONNX, times it at
    batch 1 (median of ``repeats`` runs) with the table's thread count and clock, and
    compares with `CostModel.genotype_latency_ms`.

    Returns
    -------
    dict
        ``spearman`` (rank correlation), ``median_abs_pct_error`` (percent),
        ``samples``, ``measured_median_ms``, ``threads``, ``device``, and per sample
        ``predicted_ms`` and ``measured_ms``.

    Raises
    ------
    SleepnasError
        If ``samples`` < 2, or the table lacks entries of the network.
    """
    if isinstance(samples, bool) or samples < 2:
        raise SleepnasError(f"invalid samples {samples!r}: expected an integer >= 2")
    cost_model = CostModel(config, table)
    predicted, measured = [], []
    with tempfile.TemporaryDirectory(prefix="sleepnas-check-") as tmp:
        for n in progress(range(samples), desc="timing networks", total=samples, unit="network",
                          enabled=show_progress):
            genotype = random_genotype(config.ops, config.num_nodes, seed=seed + n)
            predicted.append(cost_model.genotype_latency_ms(genotype))
            path = export_network(config, genotype, Path(tmp) / f"network_{n}.onnx")
            measured.append(time_model(path, threads=table.threads, warmup=warmup,
                                       repeats=repeats, clock=table.clock).p50_ms)
            path.unlink()

    predicted_ms, measured_ms = np.asarray(predicted), np.asarray(measured)
    errors_pct = np.abs(predicted_ms - measured_ms) / measured_ms * 100.0
    return {
        "spearman": _spearman(predicted_ms, measured_ms),
        "median_abs_pct_error": float(np.median(errors_pct)),
        "samples": samples,
        "measured_median_ms": float(np.median(measured_ms)),
        "threads": table.threads,
        "clock": table.clock,
        "device": device_name(),
        "predicted_ms": predicted_ms.tolist(),
        "measured_ms": measured_ms.tolist(),
    }
