"""Options of ``sleepnas search --strategy rl``, and ``--strategy both`` with its comparison table.

The options are declared here and added to the ``search`` command by `rl_options`; this
module imports only click at load time, so ``sleepnas search --help`` stays fast.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

logger = logging.getLogger(__name__)

#: Strategies of this module: ``rl``, and ``both`` (darts and rl, then a comparison).
RL_STRATEGY_NAMES: tuple[str, ...] = ("rl", "both")

#: Help text of ``--strategy`` for the RL choices.
STRATEGY_HELP = ("rl = an LSTM controller trained with REINFORCE (Zoph & Le 2017) and a latency-aware "
                 "reward (MnasNet); both = darts and rl, with their winners compared in one table.")

#: Zero-cost proxies offered by --proxy-screen (as `sleepnas.search.rl.SCREEN_PROXIES`).
_PROXIES = ("snip", "grasp", "grad_norm", "synflow", "fisher", "jacob_cov")


def rl_options(option: Callable[..., Any]) -> Callable[[Any], Any]:
    """Return a decorator that adds the RL options to a command, declared with ``option``."""
    declarations = [
        option("--num-iterations", "num_iterations", type=click.IntRange(min=1), default=100,
               help="[rl] Controller updates."),
        option("--children-per-update", "children_per_update", type=click.IntRange(min=1), default=1,
               help="[rl] Children sampled and evaluated per controller update; workers share them."),
        option("--eval-epochs", "eval_epochs", type=click.IntRange(min=1), default=5,
               help="[rl] Training epochs of each child before it is scored."),
        option("--child-max-batches", "child_max_batches", type=click.IntRange(min=1), default=None,
               help="[rl] Mini-batches per epoch of a child's training, at most; default all."),
        option("--reward-type", "reward_type", type=click.Choice(["accuracy", "loss", "macro_f1", "kappa"]),
               default="accuracy", help="[rl] Validation metric of the reward (loss enters as exp(-loss), "
                                        "kappa as (1 + kappa) / 2)."),
        option("--reward-latency", "reward_latency", type=click.Choice(["predicted", "measured"]),
               default="predicted", help="[rl] Latency in the reward: predicted by the latency table "
                                         "(reproducible) or measured with onnxruntime."),
        option("--latency-exponent", "latency_exponent", type=float, default=-0.07,
               help="[rl] Exponent w of the reward factor (latency / --latency-budget-ms)^w; "
                    "without a budget the factor is 1."),
        option("--flops-exponent", "flops_exponent", type=float, default=-0.07,
               help="[rl] Exponent w of the reward factor (MFLOPs / --flops-budget)^w; "
                    "without a budget the factor is 1."),
        option("--temperature", type=float, default=1.0, help="[rl] Temperature of the controller's logits."),
        option("--tanh-constant", "tanh_constant", type=float, default=None,
               help="[rl] Bound the controller's logits to ±C with C * tanh(logits); default unbounded."),
        option("--entropy-coeff", "entropy_coeff", type=float, default=1e-4,
               help="[rl] Weight of the entropy bonus of the controller's loss."),
        option("--baseline-decay", "baseline_decay", type=float, default=0.95,
               help="[rl] Decay of the moving-average reward baseline."),
        option("--proxy-screen", "proxy_screen", type=click.Choice(_PROXIES), default=None,
               help="[rl] Score each new child with this zero-cost proxy and train only the promising."),
        option("--proxy-keep-fraction", "proxy_keep_fraction",
               type=click.FloatRange(0, 1, min_open=True), default=0.5,
               help="[rl] With --proxy-screen, the share of children trained (score at or above the "
                    "matching quantile of the scores so far)."),
        option("--workers", type=click.IntRange(min=1), default=1,
               help="[rl] Children evaluated in parallel (processes here, or Ray tasks)."),
        option("--threads-per-worker", "threads_per_worker", type=click.IntRange(min=1), default=1,
               help="[rl] Torch threads of each worker."),
        option("--executor", type=click.Choice(["local", "ray"]), default="local",
               help="[rl] Where children run: local processes, or a Ray cluster (pip install "
                    "'sleepnas[ray]')."),
        option("--ray-address", "ray_address", type=str, default=None,
               help="[rl] Address HOST:PORT of a running Ray cluster; default start one on this machine."),
    ]

    def decorate(command: Any) -> Any:
        for declare in reversed(declarations):
            command = declare(command)
        return command

    return decorate


def run_both(ctx: click.Context, options: dict[str, Any], make_config: Callable[..., Any]) -> None:
    """Run DARTS then RL into ``SAVE_DIR/darts`` and ``SAVE_DIR/rl``, then compare their winners.

    ``make_config(ctx, options)`` is the command's option parser. With ``--resume DIR``,
    each part resumes from ``DIR/darts`` and ``DIR/rl``.
    """
    from sleepnas.search import rundir
    from sleepnas.search.rl_report import compare_results, write_comparison
    from sleepnas.search.strategy import make_strategy

    resume = options["resume"]
    if resume is not None:
        root = Path(resume)
    else:
        root = rundir.check_run_dir(options["save_dir"], prefix="both")
    results = {}
    for name in ("darts", "rl"):
        part = dict(options, strategy=name)
        if resume is not None:
            part["resume"] = root / name
        else:
            part["save_dir"] = root / name
        config = make_config(ctx, part)
        logger.info("--strategy both: %s search in %s", name, root / name)
        result = make_strategy(config, resume=resume is not None).run()
        results[name] = result.results

    comparison = compare_results(results)
    write_comparison(root, comparison)
    click.echo("Winners of both strategies (test subjects; latency measured at batch 1):")
    click.echo(comparison["text"], nl=False)
    click.echo(f"Run directory:      {root}")
