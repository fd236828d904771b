"""Children of the RL search: the reward, the data a worker gets, and the evaluation of one child.

A child is trained briefly on the training subjects with the same training code as any
other model (`sleepnas.search.training.train_model`) and scored on the validation
subjects. `evaluate_child` is what a worker runs: it takes a `ChildTask` (plain values
only, so any executor can ship it) and seeds everything from the task, so the result
does not depend on which worker runs it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from sleepnas.runtime.errors import SleepnasError, check_option

logger = logging.getLogger(__name__)

#: Validation metrics a reward can be based on.
REWARD_TYPES: tuple[str, ...] = ("accuracy", "loss", "macro_f1", "kappa")

#: Timed onnxruntime runs of each child's latency measurement (after 10 warm-up runs).
CHILD_LATENCY_REPEATS = 20

#: Child statuses: trained, training diverged (NaN loss), evaluation failed (error, dead worker).
OK, DIVERGED, FAILED = "ok", "diverged", "failed"


@dataclass(frozen=True)
class RewardConfig:
    """The reward of a child: a validation metric times MnasNet's soft cost constraint.

    ``reward = quality * (lat / lat_budget) ** w_lat * (flops / flops_budget) ** w_flops``,
    where ``quality`` is, per ``reward_type``:

    - ``accuracy``, ``macro_f1``: the metric, in [0, 1];
    - ``kappa``: ``(1 + kappa) / 2``, in [0, 1], so that a negative kappa does not turn
      the cost factor's preference around;
    - ``loss``: ``exp(-loss)``, the geometric mean of the probability given to the true
      stage, in (0, 1].

    A factor whose budget is ``None`` is 1. With ``w < 0`` a child slower than the budget
    loses reward and a faster one gains a little (Tan et al. 2019, MnasNet, soft
    constraint with w = -0.07). A failed or diverged child gets reward 0.

    Attributes
    ----------
    reward_type : str
    latency_budget_ms, flops_budget_mflops : float or None
        Budgets in milliseconds and in MFLOPs.
    latency_exponent, flops_exponent : float
        The exponents ``w``; 0 turns a factor off.
    """

    reward_type: str = "accuracy"
    latency_budget_ms: float | None = None
    flops_budget_mflops: float | None = None
    latency_exponent: float = -0.07
    flops_exponent: float = -0.07

    def __post_init__(self) -> None:
        check_option("--reward-type", self.reward_type, REWARD_TYPES)
        for name, value in (("--latency-exponent", self.latency_exponent),
                            ("--flops-exponent", self.flops_exponent)):
            if not math.isfinite(value):
                raise SleepnasError(f"invalid {name} {value!r}: expected a finite number such as -0.07")

    def quality(self, metrics: dict[str, Any]) -> float:
        """Return the metric part of the reward (NaN when the metric is missing or not finite)."""
        key = "loss" if self.reward_type == "loss" else self.reward_type
        value = metrics.get(key)
        if value is None or not math.isfinite(float(value)):
            return math.nan
        value = float(value)
        if self.reward_type == "kappa":
            return (1.0 + value) / 2.0
        if self.reward_type == "loss":
            return math.exp(-value)
        return value

    def cost_factor(self, latency_ms: float | None, flops: float | None) -> float:
        """Return the product of the latency and FLOPs factors (1 for a factor without budget)."""
        factor = 1.0
        if self.latency_budget_ms is not None and self.latency_exponent != 0:
            if latency_ms is None or not latency_ms > 0:
                raise SleepnasError(f"no latency for the reward (got {latency_ms!r}): a latency budget "
                                    "needs the child's latency")
            factor *= (latency_ms / self.latency_budget_ms) ** self.latency_exponent
        if self.flops_budget_mflops is not None and self.flops_exponent != 0:
            if flops is None or not flops > 0:
                raise SleepnasError(f"no FLOPs for the reward (got {flops!r})")
            factor *= (flops / 1e6 / self.flops_budget_mflops) ** self.flops_exponent
        return factor

    def reward(self, metrics: dict[str, Any], latency_ms: float | None, flops: float | None) -> float:
        """Return the reward of a trained child; 0 if its metric is not finite."""
        quality = self.quality(metrics)
        if not math.isfinite(quality):
            return 0.0
        return quality * self.cost_factor(latency_ms, flops)


@dataclass(frozen=True)
class ChildTask:
    """Everything a worker needs to evaluate one child, as plain values.

    Attributes
    ----------
    iteration, child : int
        Position of the child in the search (controller update, child of that update).
    genotype : dict
        `Genotype.to_dict` of the child.
    network : dict
        `NetworkConfig.to_dict` of the network.
    train : dict
        `TrainConfig.to_dict` of the child's training; its seed is the child's.
    measure_latency : bool
        Export the trained child to ONNX and time it with onnxruntime.
    """

    iteration: int
    child: int
    genotype: dict[str, Any]
    network: dict[str, Any]
    train: dict[str, Any]
    measure_latency: bool = True


def child_seed(seed: int, iteration: int, child: int) -> int:
    """Return the training seed of a child from the search seed and its position only.

    The seed never depends on the worker, so any executor gives the same child.
    """
    return int(np.random.SeedSequence([seed, iteration, child]).generate_state(1)[0])


class MappedWindows:
    """A read-only view of a ``.npy`` memmap that a worker process reopens by file name.

    Pickling a `numpy.memmap` copies its data. This class pickles the file name and
    layout only, so process workers on the same machine share the window store.
    """

    def __init__(self, array: np.memmap) -> None:
        self.filename = str(array.filename)
        self.dtype = array.dtype.str
        self.shape = tuple(array.shape)
        self.offset = int(array.offset)
        self._array: np.memmap | None = array

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> Any:
        if self._array is None:
            self._array = np.memmap(self.filename, dtype=self.dtype, mode="r", shape=self.shape,
                                    offset=self.offset)
        return self._array[index]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None
        return state


def child_data(data: Any, *, in_memory: bool = False) -> Any:
    """Return the `TrainData` children train on: the train and val parts, no test part.

    With ``in_memory``, the train and val windows are copied into one array, for
    executors on other machines. Otherwise a memmap travels by file name.
    """
    empty = np.zeros(0, dtype=np.int64)
    if in_memory:
        keep = np.concatenate([data.train_index, data.val_index])
        order = np.argsort(keep, kind="stable")
        windows = np.ascontiguousarray(np.asarray(data.windows[keep[order]], dtype=np.float32))
        position = np.empty(len(keep), dtype=np.int64)
        position[order] = np.arange(len(keep))
        n_train = len(data.train_index)
        return replace(data, windows=windows, labels=np.asarray(data.labels)[keep[order]],
                       subjects=np.asarray(data.subjects)[keep[order]],
                       train_index=position[:n_train], val_index=position[n_train:], test_index=empty)
    windows = data.windows
    if isinstance(windows, np.memmap) and windows.filename is not None:
        windows = MappedWindows(windows)
    return replace(data, windows=windows, test_index=empty)


def evaluate_child(task: ChildTask, data: Any) -> dict[str, Any]:
    """Train one child briefly, score it on the validation subjects and time it.

    Returns
    -------
    dict
        ``status`` (``"ok"``, ``"diverged"`` or ``"failed"``), ``reason`` (None or the
        error), ``metrics`` (validation ``accuracy``, ``macro_f1``, ``kappa``, ``loss`` of
        the last epoch), ``params``, ``measured_latency_ms`` (None if not measured),
        ``train_seconds`` (the epochs) and ``eval_seconds`` (all of this function).
    """
    import torch

    from sleepnas.search.final import count_params, measure_latency_ms
    from sleepnas.search.genotype import Genotype
    from sleepnas.search.models import create_model
    from sleepnas.search.network import NetworkConfig
    from sleepnas.search.training import TrainConfig, train_model

    network = NetworkConfig.from_dict(task.network)
    config = TrainConfig.from_dict(task.train)
    started = time.perf_counter()
    out: dict[str, Any] = {"status": OK, "reason": None, "metrics": {}, "params": None,
                           "measured_latency_ms": None, "train_seconds": None, "eval_seconds": None}
    torch.manual_seed(config.seed)
    model = create_model(Genotype.from_dict(task.genotype), network)
    out["params"] = count_params(model)
    try:
        result = train_model(model, data, config, progress_bar=False)
    except SleepnasError as err:
        if not str(err).startswith("training diverged"):
            raise
        seconds = round(time.perf_counter() - started, 3)
        out.update(status=DIVERGED, reason=str(err), train_seconds=seconds, eval_seconds=seconds)
        return out
    out["train_seconds"] = result.train_seconds
    last = result.history[-1]
    out["metrics"] = {"accuracy": last["val_accuracy"], "macro_f1": last["val_macro_f1"],
                      "kappa": last["val_kappa"], "loss": last["val_loss"]}
    if last["val_loss"] is None or not math.isfinite(last["val_loss"]):
        out.update(status=DIVERGED, reason=f"validation loss is {last['val_loss']}",
                   eval_seconds=round(time.perf_counter() - started, 3))
        return out
    if task.measure_latency:
        threads = torch.get_num_threads()
        out["measured_latency_ms"] = measure_latency_ms(model, network.in_channels, network.n_times,
                                                        repeats=CHILD_LATENCY_REPEATS)
        torch.set_num_threads(threads)
    out["eval_seconds"] = round(time.perf_counter() - started, 3)
    return out
