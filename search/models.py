"""Build the model of a genotype or of a reference model, and rebuild the model of a run directory.

`create_model` is the one factory: ``"genotype"`` networks and reference models by name
come out of it alike, so training, export and benchmarks treat them the same way.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.spec import WindowSpec

from . import rundir
from .reference import REFERENCE_MODELS, create_reference_model

logger = logging.getLogger(__name__)

#: ``config.json["model"]`` of a run that trained a genotype network.
GENOTYPE_MODEL = "genotype"


def model_name(name_or_genotype: Any) -> str:
    """Return ``"genotype"`` for a `Genotype`, else the reference model name checked against the known ones."""
    if isinstance(name_or_genotype, str):
        if name_or_genotype not in REFERENCE_MODELS:
            known = ", ".join(repr(k) for k in sorted(REFERENCE_MODELS))
            raise SleepnasError(f"unknown reference model {name_or_genotype!r}: expected one of {known}, "
                                f"or a genotype file")
        return name_or_genotype
    return GENOTYPE_MODEL


def create_model(name_or_genotype: Any, network_config: Any) -> nn.Module:
    """Build a freshly initialized model.

    Parameters
    ----------
    name_or_genotype : str or Genotype
        A reference model name (a key of `REFERENCE_MODELS`) or a genotype.
    network_config : NetworkConfig
        Input channels, samples per window and classes (and, for a genotype, the cells).

    Returns
    -------
    nn.Module
        Input ``(batch, n_chans, n_times)``, output logits ``(batch, n_classes)``.
    """
    name = model_name(name_or_genotype)
    if name != GENOTYPE_MODEL:
        return create_reference_model(name, network_config.in_channels, network_config.n_times,
                                      network_config.n_classes)
    from .network import Network

    return Network(network_config, name_or_genotype)


def describe_model(name_or_genotype: Any, network_config: Any, model: nn.Module | None = None) -> str:
    """Return the readable architecture text written to ``architecture.txt``."""
    name = model_name(name_or_genotype)
    if name == GENOTYPE_MODEL:
        return name_or_genotype.pretty(network_config.num_cells)
    model = model if model is not None else create_model(name, network_config)
    return f"Reference model {name}\n{model}\n"


def build_model(run_dir: str | os.PathLike) -> tuple[nn.Module, WindowSpec, dict[str, Any]]:
    """Rebuild the trained model of a run directory.

    Reads ``config.json``, ``window_spec.json``, ``genotype.json`` (for a genotype
    network) and ``weights.pt``.

    Returns
    -------
    model : nn.Module
        In eval mode, with the trained weights.
    spec : WindowSpec
        The window spec the model was trained with.
    config : dict
        ``config.json`` of the run.

    Raises
    ------
    SleepnasError
        If a file is missing or corrupt, or the weights do not fit the model.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SleepnasError(f"run directory {run_dir} not found")
    config = rundir.read_json(run_dir, rundir.CONFIG)
    if config.get("folds"):
        raise SleepnasError(f"{run_dir} is a cross-validation run with no single model: "
                            f"give one of its folds, such as {run_dir / 'fold-1'}")
    for key in ("model", "network"):
        if key not in config:
            raise SleepnasError(f"invalid {run_dir / rundir.CONFIG}: missing key {key!r}")
    from .network import NetworkConfig

    network_config = NetworkConfig.from_dict(config["network"])
    spec = rundir.read_window_spec(run_dir)
    if config["model"] == GENOTYPE_MODEL:
        from .genotype import Genotype

        genotype = Genotype.load(run_dir / rundir.GENOTYPE, num_nodes=network_config.num_nodes,
                                 ops=network_config.ops)
        model = create_model(genotype, network_config)
    else:
        model = create_model(config["model"], network_config)

    state = rundir.load_weights(run_dir)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise SleepnasError(f"the weights in {run_dir / rundir.WEIGHTS} do not fit the model of "
                            f"{run_dir / rundir.CONFIG}: {str(err).splitlines()[0]}") from None
    return model.eval(), spec, config
