"""``sleepnas search``: search an architecture, train the winner from scratch, and report it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from sleepnas.tools.cli_search_rl import RL_STRATEGY_NAMES, STRATEGY_HELP, rl_options
from sleepnas.tools.options import underscore_option

logger = logging.getLogger(__name__)

#: Strategies the command offers, spelled out so that ``--help`` does not import torch.
STRATEGY_NAMES: tuple[str, ...] = ("darts",) + RL_STRATEGY_NAMES

#: Options that also accept the original tool's underscore spelling (`--data_path`).
_option = underscore_option


# CLI parameter -> SearchConfig field, where the two names differ.
_FIELD_NAMES = {"input_length": "n_times"}

# CLI parameters that are not SearchConfig fields.
_NOT_FIELDS = ("resume", "input_channels", "num_classes")


@click.command()
@_option("--strategy", type=click.Choice(STRATEGY_NAMES), default="darts",
         help="Search strategy: darts = differentiable architecture search (Liu et al. 2019); "
              + STRATEGY_HELP)
@_option("--data-path", "data_path", type=click.Path(file_okay=False, path_type=Path), default=None,
         help="Folder with the recordings (searched recursively). Required unless --resume.")
@_option("--save-dir", "save_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
         help="Run directory to create; default runs/<strategy>-YYYYMMDD-HHMMSS.")
@_option("--resume", type=click.Path(file_okay=False, path_type=Path), default=None,
         help="Continue the run in this directory from its last checkpoint, with its options.")
@_option("--preset", type=click.Choice(["default", "small"]), default="default",
         help="Network preset; small (16 channels, 5 cells, 3 nodes) makes CPU runs practical.")
@_option("--channels", type=str, default=None,
         help="Comma-separated input channel names; default the 7 Sleep-EDF cassette signals.")
@_option("--input-channels", "input_channels", type=click.IntRange(min=1), default=None,
         help="Number of input channels; must equal the number of --channels names.")
@_option("--input-length", "input_length", type=click.IntRange(min=32), default=3000,
         help="Samples per window at 100 Hz (3000 = 30 s).")
@_option("--scheme", type=click.Choice(["aasm5", "rk7"]), default=None,
         help="Stage scheme; default aasm5.")
@_option("--num-classes", "num_classes", type=click.Choice(["5", "7"]), default=None,
         help="Another spelling of --scheme: 5 = aasm5, 7 = rk7.")
@_option("--init-channels", "init_channels", type=click.IntRange(min=2), default=None,
         help="Channels of the first cells [default: 64, or 16 with --preset small].")
@_option("--num-cells", "num_cells", type=click.IntRange(min=1), default=None,
         help="Cells of the network [default: 8, or 5 with --preset small].")
@_option("--num-nodes", "num_nodes", type=click.IntRange(min=1), default=None,
         help="Intermediate nodes per cell [default: 4, or 3 with --preset small].")
@_option("--ops", type=str, default=None,
         help="Comma-separated op subset to search over; default all 14 ops.")
@_option("--batch-size", "batch_size", type=click.IntRange(min=2), default=32,
         help="Windows per mini-batch, in the search and the final training.")
@_option("--w-lr", "w_lr", type=float, default=0.025,
         help="Initial learning rate of the weights (SGD), cosine-annealed to 0.001.")
@_option("--alpha-lr", "alpha_lr", type=float, default=3e-4,
         help="Learning rate of the arch parameters (Adam).")
@_option("--unrolled", is_flag=True, help="Second-order DARTS (a virtual weight step per arch step).")
@_option("--num-epochs", "num_epochs", type=click.IntRange(min=1), default=50, help="Search epochs.")
@_option("--final-train-epochs", "final_train_epochs", type=click.IntRange(min=0), default=20,
         help="Epochs of the final training of the derived genotype, at most; 0 skips it.")
@_option("--patience", type=click.IntRange(min=0), default=10,
         help="Stop the final training after this many epochs without a better validation "
              "macro-F1; 0 never stops early.")
@_option("--latency-table", "latency_table", type=click.Path(dir_okay=False, path_type=Path), default=None,
         help="Latency table (JSON) measured on the target device with `sleepnas cost measure`.")
@_option("--latency-weight", "latency_weight", type=float, default=0.0,
         help="Weight of the expected-latency term of the arch loss; 0 turns it off.")
@_option("--latency-budget-ms", "latency_budget_ms", type=float, default=None,
         help="Latency budget in ms: the term is w * max(0, E[lat] / budget - 1); without a budget, "
              "w * E[lat] / E[lat at uniform arch weights].")
@_option("--flops-weight", "flops_weight", type=float, default=0.0,
         help="Weight of the expected-FLOPs term of the arch loss; 0 turns it off.")
@_option("--flops-budget", "flops_budget", type=float, default=None,
         help="FLOPs budget in MFLOPs (one multiply-add = one FLOP), used like --latency-budget-ms.")
@_option("--partial-channels", "partial_channels", type=click.IntRange(min=1), default=1,
         help="PC-DARTS: each mixed op sees 1/K of the channels, to cut memory and time.")
@click.option("--checkpoint-cells/--no-checkpoint-cells", "checkpoint_cells", default=True,
              show_default=True,
              help="Recompute the supernet cells' activations in the backward pass (gradient "
                   "checkpointing): about a third of the memory of plain DARTS.")
@_option("--class-weighted", "class_weighted", is_flag=True,
         help="Weight the loss by inverse stage frequency (W and N2 dominate sleep data).")
@_option("--collapse-guard", "collapse_guard", type=click.Choice(["cap", "stop", "off"]), default="cap",
         help="Against collapse onto parameter-free ops: cap them per derived cell, stop the "
              "search when a cell exceeds the cap, or off.")
@_option("--max-parameter-free", "max_parameter_free", type=click.IntRange(min=0), default=2,
         help="Cap of the collapse guard: parameter-free ops (pooling, identity) per cell.")
@_option("--val-fraction", "val_fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
         default=0.15, help="Share of subjects held out for validation.")
@_option("--test-fraction", "test_fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
         default=0.15, help="Share of subjects held out for the test.")
@_option("--print-freq", "print_freq", type=click.IntRange(min=0), default=10,
         help="Log the running losses every this many mini-batches; 0 logs once per epoch.")
@_option("--seed", type=int, default=0, help="Seed of the split, the weights and the shuffling.")
@_option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
         help="Device to search on; auto takes CUDA when available.")
@_option("--cache-dir", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
         help="Cache folder of the window store; default $SLEEPNAS_CACHE or ~/.cache/sleepnas.")
@rl_options(_option)
@click.pass_context
def search(ctx: click.Context, **options: Any) -> None:
    """Search an architecture on the recordings in --data-path, then train and test it.

    The subjects are split into training, validation and test subjects. The training
    subjects are split again: some train the supernet's weights, the others its arch
    parameters. The derived genotype is trained from scratch with early
    stopping on validation macro-F1 and evaluated on the test subjects. The run directory
    receives config.json, split.json, window_spec.json, genotype.json, architecture.txt,
    search.json, checkpoint.pt (each epoch), weights.pt, results.json, log.txt and PNG plots.
    """
    from sleepnas.search.final import format_results
    from sleepnas.search.strategy import make_strategy

    if options["strategy"] == "both":
        from sleepnas.tools.cli_search_rl import run_both

        run_both(ctx, options, search_config)
        return
    config = search_config(ctx, options)
    strategy = make_strategy(config, resume=options["resume"] is not None)
    result = strategy.run()

    click.echo(result.architecture, nl=False)
    click.echo(format_results(result.results), nl=False)
    seconds = result.results.get("search_seconds")
    click.echo(f"Search time:        {'n/a' if seconds is None else f'{seconds:.1f} s'}")
    click.echo(f"Run directory:      {result.run_dir}")


def search_config(ctx: click.Context, options: dict[str, Any]):
    """Turn the parsed options into a `SearchConfig`; with --resume, start from the run's options.

    On resume, an option given on the command line must equal the run's, or the
    resumption is rejected with the differences listed.
    """
    from sleepnas.runtime.errors import SleepnasError
    from sleepnas.runtime.stages import resolve_scheme
    from sleepnas.search.rl import search_config as make_config

    given = {name for name in options
             if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}
    values = _config_values(options)
    if options["resume"] is None:
        if options["data_path"] is None:
            raise SleepnasError("missing --data-path: give the folder with the recordings, "
                                "or --resume RUN_DIR to continue a run")
        values["scheme"] = resolve_scheme(options["scheme"], _int_or_none(options["num_classes"])).name
        _check_input_channels(options["input_channels"], values["channels"])
        return make_config(values)

    saved = _saved_options(options["resume"])
    merged = dict(saved)
    for name, value in values.items():
        if _parameter_of(name) in given:
            merged[name] = value
    if "scheme" in given or "num_classes" in given:
        merged["scheme"] = resolve_scheme(options["scheme"], _int_or_none(options["num_classes"])).name
    merged["save_dir"] = str(options["resume"])
    _check_input_channels(options["input_channels"], tuple(merged.get("channels", ())))
    return make_config(merged)


def _parameter_of(field_name: str) -> str:
    for parameter, name in _FIELD_NAMES.items():
        if name == field_name:
            return parameter
    return field_name


def _int_or_none(value: str | None) -> int | None:
    return None if value is None else int(value)


def _config_values(options: dict[str, Any]) -> dict[str, Any]:
    """Map the CLI options onto `SearchConfig` fields (without the scheme)."""
    from sleepnas.runtime.spec import CASSETTE_CHANNELS

    values: dict[str, Any] = {}
    for name, value in options.items():
        if name in _NOT_FIELDS or name == "scheme":
            continue
        if isinstance(value, Path):
            value = str(value)
        values[_FIELD_NAMES.get(name, name)] = value
    channels = options["channels"]
    values["channels"] = tuple(CASSETTE_CHANNELS) if channels is None else tuple(
        name.strip() for name in channels.split(",") if name.strip())
    if options["ops"] is not None:
        values["ops"] = tuple(op.strip() for op in options["ops"].split(",") if op.strip())
    values["patience"] = options["patience"] or None
    return values


def _check_input_channels(input_channels: int | None, channels: tuple[str, ...]) -> None:
    from sleepnas.runtime.errors import SleepnasError

    if not channels:
        raise SleepnasError("invalid --channels: expected comma-separated channel names")
    if input_channels is not None and input_channels != len(channels):
        raise SleepnasError(f"--input-channels {input_channels} does not match the {len(channels)} "
                            f"--channels names ({', '.join(channels)})")


def _saved_options(run_dir: Path) -> dict[str, Any]:
    """Read the search options of the run in ``run_dir`` from its config.json."""
    from sleepnas.runtime.errors import SleepnasError
    from sleepnas.search import rundir

    if not (run_dir / rundir.CONFIG).is_file():
        raise SleepnasError(f"cannot resume {run_dir}: it has no {rundir.CONFIG}; give the directory "
                            "of an earlier search")
    saved = rundir.read_json(run_dir, rundir.CONFIG).get("options") or {}
    if "strategy" not in saved or "num_epochs" not in saved:
        raise SleepnasError(f"cannot resume {run_dir}: its {rundir.CONFIG} is not that of a search "
                            "(use `sleepnas train --resume` for a training run)")
    return saved
