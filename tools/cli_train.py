"""``sleepnas train``: train a genotype or a reference model from scratch into a run directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from sleepnas.tools.options import underscore_option

logger = logging.getLogger(__name__)


#: Options that also accept the original tool's underscore spelling (`--data_path`).
_option = underscore_option


#: Names of `sleepnas.search.reference.REFERENCE_MODELS`, spelled out so that listing the
#: commands does not import torch; a test keeps the two equal.
REFERENCE_MODEL_NAMES: tuple[str, ...] = ("tinysleepnet",)


@click.command()
@click.argument("genotype", required=False, type=click.Path(dir_okay=False, path_type=Path))
@_option("--model", "model", type=click.Choice(REFERENCE_MODEL_NAMES), default=None,
         help="Train this reference model instead of a genotype.")
@_option("--data-path", "data_path", type=click.Path(exists=True, file_okay=False, path_type=Path),
         required=True, help="Folder with the recordings (searched recursively).")
@_option("--save-dir", "save_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
         help="Run directory to create; default runs/train-YYYYMMDD-HHMMSS.")
@_option("--epochs", "--final-train-epochs", "epochs", type=click.IntRange(min=1), default=20,
         help="Training epochs, at most (early stopping may end sooner).")
@_option("--batch-size", "batch_size", type=click.IntRange(min=2), default=32,
         help="Windows per mini-batch.")
@_option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd",
         help="SGD with momentum 0.9 (as DARTS trains), or Adam.")
@_option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
         help="Initial learning rate, cosine-annealed to 0; default 0.025 for SGD, 0.001 for Adam.")
@_option("--weight-decay", "weight_decay", type=click.FloatRange(min=0), default=3e-4,
         help="L2 weight decay.")
@_option("--grad-clip", "grad_clip", type=click.FloatRange(min=0), default=5.0,
         help="Maximum gradient norm; 0 turns clipping off.")
@_option("--patience", type=click.IntRange(min=0), default=10,
         help="Stop after this many epochs without a better validation macro-F1; 0 never stops early.")
@_option("--class-weighted", "class_weighted", is_flag=True,
         help="Weight the loss by inverse stage frequency (W and N2 dominate sleep data).")
@_option("--preset", type=click.Choice(["default", "small"]), default="default",
         help="Network preset of a genotype network.")
@_option("--init-channels", "init_channels", type=click.IntRange(min=2), default=None,
         help="Channels of the first cells; default from the preset.")
@_option("--num-cells", "num_cells", type=click.IntRange(min=1), default=None,
         help="Cells of a genotype network; default from the preset.")
@_option("--channels", type=str, default=None,
         help="Comma-separated input channel names; default the 7 Sleep-EDF cassette signals.")
@_option("--input-channels", "input_channels", type=click.IntRange(min=1), default=None,
         help="Number of input channels; must equal the number of --channels names.")
@_option("--scheme", type=click.Choice(["aasm5", "rk7"]), default=None,
         help="Stage scheme; default aasm5.")
@_option("--num-classes", "num_classes", type=click.Choice(["5", "7"]), default=None,
         help="Another spelling of --scheme: 5 = aasm5, 7 = rk7.")
@_option("--folds", type=click.IntRange(min=2), default=None,
         help="Run subject-wise K-fold cross-validation with this many folds.")
@_option("--val-fraction", "val_fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
         default=0.15, help="Share of subjects held out for validation.")
@_option("--test-fraction", "test_fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
         default=0.15, help="Share of subjects held out for the test (without --folds).")
@_option("--seed", type=int, default=0, help="Seed of the split, the weights and the shuffling.")
@_option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
         help="Device to train on; auto takes CUDA when available.")
@_option("--threads", type=click.IntRange(min=1), default=None,
         help="Torch threads while training; default torch's choice.")
@_option("--print-freq", "print_freq", type=click.IntRange(min=0), default=0,
         help="Also log the training loss every this many mini-batches; 0 logs once per epoch.")
@_option("--resume", is_flag=True, help="Continue the run in --save-dir from its checkpoint.")
@_option("--cache-dir", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
         help="Cache folder of the window store; default $SLEEPNAS_CACHE or ~/.cache/sleepnas.")
def train(genotype: Path | None, model: str | None, data_path: Path, save_dir: Path | None,
          epochs: int, batch_size: int, optimizer: str, lr: float | None, weight_decay: float,
          grad_clip: float, patience: int, class_weighted: bool, preset: str,
          init_channels: int | None, num_cells: int | None, channels: str | None,
          input_channels: int | None, scheme: str | None, num_classes: str | None,
          folds: int | None, val_fraction: float, test_fraction: float, seed: int, device: str,
          threads: int | None, print_freq: int, resume: bool, cache_dir: Path | None) -> None:
    """Train GENOTYPE (a genotype JSON file) or --model NAME from scratch, then test it.

    The subjects are split into training, validation and test subjects; the epoch with
    the best validation macro-F1 is kept and evaluated on the test subjects. The run
    directory receives config.json, window_spec.json, split.json, architecture.txt,
    weights.pt, checkpoint.pt (each epoch), results.json and log.txt.
    """
    from sleepnas.runtime.errors import SleepnasError
    from sleepnas.runtime.spec import CASSETTE_CHANNELS, WindowSpec
    from sleepnas.runtime.stages import resolve_scheme
    from sleepnas.search import rundir
    from sleepnas.search.final import format_results, load_training_cohort, train_cohort
    from sleepnas.search.models import describe_model
    from sleepnas.search.network import network_config
    from sleepnas.search.training import TrainConfig, resolve_device

    if (genotype is None) == (model is None):
        raise SleepnasError("give either a GENOTYPE.json file or --model NAME "
                            f"(one of {', '.join(REFERENCE_MODEL_NAMES)}), not both or neither")
    names = tuple(CASSETTE_CHANNELS) if channels is None else tuple(
        name.strip() for name in channels.split(",") if name.strip())
    if not names:
        raise SleepnasError(f"invalid --channels {channels!r}: expected comma-separated channel names")
    if input_channels is not None and input_channels != len(names):
        raise SleepnasError(f"--input-channels {input_channels} does not match the {len(names)} "
                            f"--channels names ({', '.join(names)})")
    scheme_obj = resolve_scheme(scheme, None if num_classes is None else int(num_classes))
    spec = WindowSpec(channels=names, scheme=scheme_obj.name)

    architecture: Any = model
    overrides: dict[str, Any] = {"in_channels": len(names), "n_times": spec.n_times,
                                 "n_classes": scheme_obj.n_classes, "init_channels": init_channels,
                                 "num_cells": num_cells}
    if genotype is not None:
        from sleepnas.search.genotype import Genotype

        architecture = Genotype.load(genotype)
        overrides["num_nodes"] = architecture.num_nodes
    net_config = network_config(preset, **overrides)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                         weight_decay=weight_decay, grad_clip=grad_clip or None,
                         class_weighted=class_weighted, patience=patience or None, seed=seed,
                         device=device, num_threads=threads)
    options = {"command": "train", "data_path": str(data_path.resolve()), "channels": list(names),
               "scheme": scheme_obj.name, "preset": preset, "folds": folds,
               "val_fraction": val_fraction, "test_fraction": test_fraction,
               "genotype_file": None if genotype is None else str(genotype)}

    # Check everything a user can get wrong before the run directory is created.
    resolve_device(device)
    run_dir = rundir.check_run_dir(save_dir, prefix="train", resume=resume)
    cohort, splits = load_training_cohort(data_path, spec, seed=seed, folds=folds,
                                          val_fraction=val_fraction, test_fraction=test_fraction,
                                          cache_dir=cache_dir)

    rundir.create_run_dir(run_dir, resume=resume)
    handler = rundir.add_log_file(run_dir)
    try:
        logger.info("run directory: %s", run_dir)
        results = train_cohort(architecture, net_config, cohort, splits, config, run_dir,
                               folds=folds is not None, resume=resume, options=options,
                               log_every=print_freq or None)
    finally:
        logging.getLogger("sleepnas").removeHandler(handler)
        handler.close()

    click.echo(describe_model(architecture, net_config), nl=False)
    click.echo(format_results(results), nl=False)
    click.echo(f"Run directory:      {run_dir}")
