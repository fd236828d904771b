"""Tiny run directories, written the way training writes them, for export tests.

The weights are the seeded initial weights, with batch-norm statistics moved away
from their defaults so that a wrong export of them would show in the logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sleepnas.runtime.spec import WindowSpec
from sleepnas.search import rundir
from sleepnas.search.genotype import Genotype
from sleepnas.search.models import create_model
from sleepnas.search.network import NetworkConfig

#: Ops of the normal and reduction cells of `genotype_with_ops`. Together they are every
#: op of the space except ``zero``, which a derived genotype never keeps.
NORMAL_OPS = ("conv_1x1", "conv_3x1", "conv_5x1", "conv_7x1", "dil_conv_3x1", "dil_conv_5x1",
              "sep_conv_3x1", "sep_conv_5x1")
REDUCE_OPS = ("max_pool_3x1", "avg_pool_3x1", "lstm", "attention", "identity", "lstm",
              "attention", "conv_3x1")

#: Two channels and 30 s at 100 Hz keep exports quick but the shapes realistic.
TINY_SPEC = WindowSpec(channels=("EEG Fpz-Cz", "EEG Pz-Oz"), sfreq=100.0, window_s=30.0,
                       scheme="aasm5", scale=(20.0, 15.0))


def genotype_with_ops(normal_ops=NORMAL_OPS, reduce_ops=REDUCE_OPS, num_nodes: int = 4) -> Genotype:
    """Return a genotype whose cells use the given ops, node ``i`` fed by nodes 0..i-1."""
    def edges(ops):
        result = []
        for i, op in enumerate(ops):
            node = 2 + i // 2
            result.append((op, (i % 2) if node == 2 else (i % 2 + node - 2)))
        return tuple(result)

    return Genotype(edges(normal_ops), edges(reduce_ops), num_nodes)


def tiny_config(spec: WindowSpec = TINY_SPEC, **overrides) -> NetworkConfig:
    values = dict(in_channels=spec.n_chans, n_times=spec.n_times, n_classes=len(spec.stage_names),
                  init_channels=8, num_cells=3, num_nodes=4, stem_multiplier=1)
    values.update(overrides)
    return NetworkConfig(**values)


def _perturb_batch_norm(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))


def make_run_dir(path: Path, *, model: str = "genotype", genotype: Genotype | None = None,
                 spec: WindowSpec = TINY_SPEC, config: NetworkConfig | None = None, seed: int = 0,
                 weights: bool = True, data_path: str | None = None,
                 split: dict | None = None) -> Path:
    """Write a finished run directory with seeded weights; return its path."""
    config = config or tiny_config(spec)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if model == "genotype":
        genotype = genotype or genotype_with_ops()
        network = create_model(genotype, config)
        genotype.save(path / rundir.GENOTYPE)
    else:
        network = create_model(model, config)
    _perturb_batch_norm(network, seed)

    run_config = {"model": model, "network": config.to_dict(), "options": {"seed": seed}}
    if data_path is not None:
        run_config["options"]["data_path"] = data_path
    rundir.write_json(path, rundir.CONFIG, run_config)
    rundir.write_window_spec(path, spec)
    rundir.write_json(path, rundir.RESULTS, {"accuracy": 0.71, "macro_f1": 0.62, "kappa": 0.58,
                                             "per_stage_f1": {"W": 0.9, "N1": 0.3, "N2": 0.8,
                                                              "N3": 0.7, "REM": 0.6},
                                             "confusion": [[1]], "params": 123})
    split = split or {"train": ["SC400"], "val": ["SC401"], "test": ["SC402"]}
    (path / "split.json").write_text(json.dumps(split))
    if weights:
        rundir.save_weights(path, network.state_dict())
    return path
