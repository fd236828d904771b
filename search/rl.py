"""The RL search strategy: a controller samples children, their rewards train it.

Each of ``num_iterations`` controller updates samples ``children_per_update`` children
(`sleepnas.search.controller.Controller`). Each new child is trained for ``eval_epochs``
epochs on the training subjects and scored on the validation subjects
(`sleepnas.search.rl_child.evaluate_child`), by an executor that may run the children of
an update in parallel (`sleepnas.search.executors`). The reward is a validation metric
times MnasNet's soft cost constraint (`sleepnas.search.rl_child.RewardConfig`). A child
seen before is not trained again. The best child, by reward, is the winner that the
shared run trains from scratch.

Files: ``history.jsonl`` (one line per child), ``checkpoint.pt`` after every update,
``pareto.json`` and ``pareto.png`` (validation accuracy against latency of every trained
child) and ``rewards.png``.

References
----------
Zoph, B., & Le, Q. V. (2017). Neural architecture search with reinforcement learning. ICLR.
Tan, M., et al. (2019). MnasNet: Platform-aware neural architecture search for mobile. CVPR.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sleepnas.runtime.errors import SleepnasError, check_option, check_positive
from sleepnas.runtime.utils import atomic_write_text
from sleepnas.search.controller import CONTROLLER_LR, Controller, ControllerTrainer
from sleepnas.search.executors import EXECUTORS, make_executor
from sleepnas.search.genotype import Genotype
from sleepnas.search.rl_child import RewardConfig
from sleepnas.search.strategy import SearchConfig, SearchContext, SearchStrategy

logger = logging.getLogger(__name__)

#: One line per child, in the order the controller sampled them.
HISTORY_FILE = "history.jsonl"

#: Child status of a child that proxy screening kept from training.
SCREENED = "screened"

#: Sources of the latency in the reward.
REWARD_LATENCIES: tuple[str, ...] = ("predicted", "measured")

#: Zero-cost proxies that can screen children (``None`` screens none).
SCREEN_PROXIES: tuple[str, ...] = ("snip", "grasp", "grad_norm", "synflow", "fisher", "jacob_cov")

#: Children always trained before proxy screening starts to reject any.
SCREEN_WARMUP = 2

#: Options of an RL search that are not options of the other strategies.
RL_FIELDS: tuple[str, ...] = (
    "num_iterations", "children_per_update", "eval_epochs", "child_max_batches", "reward_type",
    "reward_latency", "latency_exponent", "flops_exponent", "temperature", "tanh_constant",
    "entropy_coeff", "baseline_decay", "controller_lr", "proxy_screen", "proxy_keep_fraction",
    "workers", "executor", "ray_address", "threads_per_worker")


@dataclass(frozen=True)
class RLSearchConfig(SearchConfig):
    """Options of an RL search: those of `SearchConfig` and the controller's, reward's and workers'.

    The budgets are ``latency_budget_ms`` and ``flops_budget`` of `SearchConfig`; a
    factor of the reward is on only with its budget.

    Attributes
    ----------
    num_iterations : int
        Controller updates.
    children_per_update : int
        Children sampled, evaluated and learned from per update (what workers share).
    eval_epochs : int
        Training epochs of each child.
    child_max_batches : int or None
        Mini-batches per epoch of a child's training, at most.
    reward_type : str
        One of `sleepnas.search.rl_child.REWARD_TYPES`.
    reward_latency : str
        ``"predicted"`` (latency table, reproducible) or ``"measured"`` (onnxruntime).
    latency_exponent, flops_exponent : float
        Exponents ``w`` of the cost factors (MnasNet: -0.07).
    temperature : float
        Divides the controller's logits.
    tanh_constant : float or None
        Bounds the logits to ``±tanh_constant``.
    entropy_coeff : float
        Weight of the entropy bonus.
    baseline_decay : float
        Decay of the reward's moving average.
    controller_lr : float
        Adam learning rate of the controller.
    proxy_screen : str or None
        Zero-cost proxy that screens children; ``None`` trains every new child.
    proxy_keep_fraction : float
        With screening, a child is trained if its proxy score reaches the
        ``1 - proxy_keep_fraction`` quantile of the scores so far. A screened child
        gets no reward and takes no part in the controller's update.
    workers : int
        Parallel workers (processes with ``executor="local"``).
    executor : str
        ``"local"`` or ``"ray"``.
    ray_address : str or None
        Address of a running Ray cluster; ``None`` starts one on this machine.
    threads_per_worker : int
        Torch threads of each worker.
    """

    strategy: str = "rl"
    num_iterations: int = 100
    children_per_update: int = 1
    eval_epochs: int = 5
    child_max_batches: int | None = None
    reward_type: str = "accuracy"
    reward_latency: str = "predicted"
    latency_exponent: float = -0.07
    flops_exponent: float = -0.07
    temperature: float = 1.0
    tanh_constant: float | None = None
    entropy_coeff: float = 1e-4
    baseline_decay: float = 0.95
    controller_lr: float = CONTROLLER_LR
    proxy_screen: str | None = None
    proxy_keep_fraction: float = 0.5
    workers: int = 1
    executor: str = "local"
    ray_address: str | None = None
    threads_per_worker: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_iterations", "children_per_update", "eval_epochs", "workers",
                     "threads_per_worker", "temperature", "controller_lr"):
            check_positive(f"--{name.replace('_', '-')}", getattr(self, name))
        if self.child_max_batches is not None:
            check_positive("--child-max-batches", self.child_max_batches)
        if self.tanh_constant is not None:
            check_positive("--tanh-constant", self.tanh_constant)
        check_positive("--entropy-coeff", self.entropy_coeff, allow_zero=True)
        check_option("--reward-latency", self.reward_latency, REWARD_LATENCIES)
        check_option("--executor", self.executor, EXECUTORS)
        if self.proxy_screen is not None:
            check_option("--proxy-screen", self.proxy_screen, SCREEN_PROXIES)
        if not 0 < self.proxy_keep_fraction <= 1:
            raise SleepnasError(f"invalid --proxy-keep-fraction {self.proxy_keep_fraction!r}: expected a "
                                "number in (0, 1]")
        if not 0 <= self.baseline_decay < 1:
            raise SleepnasError(f"invalid --baseline-decay {self.baseline_decay!r}: expected a number in [0, 1)")
        if self.ray_address is not None and self.executor != "ray":
            raise SleepnasError("--ray-address needs --executor ray")
        if self.executor == "ray" and importlib.util.find_spec("ray") is None:
            raise SleepnasError("--executor ray needs Ray, which is not installed: pip install 'sleepnas[ray]'")
        self.reward_config()

    def reward_config(self) -> RewardConfig:
        """Return the reward of the children."""
        return RewardConfig(self.reward_type, self.latency_budget_ms, self.flops_budget,
                            self.latency_exponent, self.flops_exponent)


def search_config(values: dict[str, Any]) -> SearchConfig:
    """Build the config of ``values["strategy"]``: `RLSearchConfig` for ``rl``, else `SearchConfig`.

    For other strategies the RL options are dropped.
    """
    if values.get("strategy") == "rl":
        return RLSearchConfig(**values)
    return SearchConfig(**{k: v for k, v in values.items() if k not in RL_FIELDS})


def genotype_key(genotype: Genotype) -> str:
    """Return the cache key of a genotype: its JSON with each node's edges in input order."""
    cells = []
    for edges in (genotype.normal, genotype.reduce):
        nodes = [sorted(edges[i:i + 2], key=lambda e: (e[1], e[0])) for i in range(0, len(edges), 2)]
        cells.append([[op, j] for node in nodes for op, j in node])
    return json.dumps({"normal": cells[0], "reduce": cells[1], "num_nodes": genotype.num_nodes},
                      separators=(",", ":"))


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


@dataclass
class _SearchState:
    """State of an RL search between updates, as the checkpoint stores it."""

    iteration: int = 0
    updates: list[dict[str, Any]] = field(default_factory=list)
    cache: dict[str, dict[str, Any]] = field(default_factory=dict)
    proxy_scores: list[float] = field(default_factory=list)
    proxy_seconds: float = 0.0


class RLSearch(SearchStrategy):
    """REINFORCE search with a hardware-aware reward, children evaluated by an executor."""

    name = "rl"

    def run(self) -> Any:
        """Check the latency table and the Ray cluster, then search as every strategy does."""
        config = self.config
        if not isinstance(config, RLSearchConfig):
            raise SleepnasError("the rl strategy needs an RLSearchConfig")
        needs_table = config.reward_latency == "predicted" and config.latency_budget_ms is not None
        if needs_table and self.cost_model().latency_table is None:
            raise SleepnasError("--latency-budget-ms with --reward-latency predicted needs --latency-table "
                                "FILE (build one with `sleepnas cost build`), or use --reward-latency measured")
        if config.executor == "ray" and config.ray_address is not None:
            from sleepnas.search.executors import check_ray_address

            check_ray_address(config.ray_address)
        return super().run()

    def _run(self, context: SearchContext) -> tuple[Genotype, list[dict[str, Any]]]:
        from sleepnas.search.rl_loop import SearchLoop

        config = context.config
        cost_model = self.cost_model()
        net = config.network_config()
        controller = Controller(net.ops, net.num_nodes, temperature=config.temperature,
                                tanh_constant=config.tanh_constant, seed=config.seed)
        trainer = ControllerTrainer(controller, lr=config.controller_lr, baseline_decay=config.baseline_decay,
                                    entropy_coeff=config.entropy_coeff)
        generator = torch.Generator().manual_seed(config.seed)
        state = _SearchState()
        if context.checkpoint is not None:
            saved = context.checkpoint
            trainer.load_state_dict(saved["trainer"])
            generator.set_state(saved["generator"])
            state = _SearchState(**saved["state"])
            logger.info("resuming the RL search at update %d/%d", state.iteration + 1, config.num_iterations)

        measure = self.measure_latency or config.reward_latency == "measured"
        loop = SearchLoop(context, controller, trainer, generator, state, cost_model, measure)
        records = loop.run()
        winner = loop.winner(records)
        loop.write_outputs(records)
        return winner, state.updates


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """Read ``history.jsonl`` of an RL run: one dict per child."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise SleepnasError(f"corrupt {path}: line {number} is not JSON ({err.msg})") from None
    return records


def write_history(run_dir: str | Path, records: list[dict[str, Any]]) -> Path:
    """Write ``history.jsonl`` atomically, one JSON object per child."""
    text = "".join(json.dumps(_finite_or_none(r), sort_keys=True) + "\n" for r in records)
    return atomic_write_text(Path(run_dir) / HISTORY_FILE, text)

