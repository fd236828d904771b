"""Training and evaluation of any sleep-staging model on subject-wise splits of windows.

One implementation serves the final training of a searched genotype, the training of a
reference model, and the short training of RL children. The data comes as `TrainData`
(see `sleepnas.search.dataset`): raw windows read in random mini-batches and normalized
on the fly by the `WindowSpec` fitted on the training subjects.

The defaults follow the final training of DARTS (Liu et al., "DARTS: Differentiable
Architecture Search", ICLR 2019): SGD with momentum 0.9, weight decay 3e-4, learning
rate 0.025 annealed to 0 on a cosine, gradient norm clipped at 5. They match the weight
optimizer of the search, so a genotype is trained as it was searched. Adam is offered
because TinySleepNet (Supratak & Guo 2020) was published with it.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sleepnas.runtime.errors import SleepnasError, check_option, check_positive
from sleepnas.runtime.utils import progress

from . import rundir
from .dataset import (
    FIT_SCALE_WINDOWS,
    TrainData,
    data_from_cohort,
    evaluate_model,
    make_data,
    predict,
    read_batch,
)

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_LR", "FIT_SCALE_WINDOWS", "TrainConfig", "TrainData", "TrainResult",
           "class_weights", "data_from_cohort", "evaluate_model", "make_data", "predict",
           "resolve_device", "train_model"]

#: Default learning rate of each optimizer.
DEFAULT_LR = {"sgd": 0.025, "adam": 1e-3}

# Config keys that may differ between a run and its resumption.
_RESUME_FREE_KEYS = ("device", "num_threads", "eval_batch_size")


@dataclass(frozen=True)
class TrainConfig:
    """Options of one training run.

    Attributes
    ----------
    epochs : int
        Passes over the training windows, at most.
    batch_size : int
        Windows per mini-batch.
    optimizer : str
        ``"sgd"`` (momentum, as DARTS trains) or ``"adam"``.
    lr : float or None
        Initial learning rate; ``None`` takes `DEFAULT_LR` of the optimizer. It is
        cosine-annealed to ``lr_min`` over ``epochs``.
    lr_min : float
        Learning rate at the end of the cosine.
    momentum : float
        SGD momentum (ignored by Adam).
    weight_decay : float
        L2 weight decay.
    grad_clip : float or None
        Maximum gradient norm; ``None`` turns clipping off.
    class_weighted : bool
        Weight the cross-entropy by inverse class frequency in the training windows,
        so the rare stages (N1 above all) are not drowned by W and N2.
    patience : int or None
        Stop after this many epochs without a better validation macro-F1;
        ``None`` trains every epoch.
    seed : int
        Seed of weight initialization, shuffling and dropout.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).
    num_threads : int or None
        Torch intra-op threads while training; ``None`` leaves torch's setting.
    eval_batch_size : int
        Windows per batch when evaluating.
    max_batches_per_epoch : int or None
        Cap on mini-batches per epoch, for quick training of search children.
    drop_path_prob : float
        Drop-path probability of a genotype network, raised linearly from 0 over the
        epochs as DARTS trains (0.2 there); models without ``drop_path_prob`` ignore it.
    """

    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float | None = None
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float | None = 5.0
    class_weighted: bool = False
    patience: int | None = 10
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None
    eval_batch_size: int = 128
    max_batches_per_epoch: int | None = None
    drop_path_prob: float = 0.0

    def __post_init__(self) -> None:
        check_option("optimizer", self.optimizer, DEFAULT_LR)
        check_option("device", self.device, ("auto", "cpu", "cuda"))
        check_positive("--epochs", self.epochs)
        check_positive("--batch-size", self.batch_size)
        check_positive("eval_batch_size", self.eval_batch_size)
        check_positive("lr_min", self.lr_min, allow_zero=True)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        if not 0.0 <= self.drop_path_prob < 1.0:
            raise SleepnasError(f"invalid drop_path_prob {self.drop_path_prob!r}: expected a probability in [0, 1)")
        for name in ("lr", "grad_clip", "patience", "num_threads", "max_batches_per_epoch"):
            value = getattr(self, name)
            if value is not None:
                check_positive(name, value)

    @property
    def learning_rate(self) -> float:
        """The initial learning rate, with the optimizer's default filled in."""
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.optimizer]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SleepnasError(f"invalid training config: unknown keys {unknown}; expected {sorted(known)}")
        return cls(**data)


def resolve_device(name: str) -> torch.device:
    """Return the torch device for ``"cpu"``, ``"cuda"`` or ``"auto"``."""
    check_option("--device", name, ("auto", "cpu", "cuda"))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SleepnasError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Return inverse-frequency class weights ``n / (n_present * n_k)``; 0 for absent classes.

    A balanced split gets weight 1 for every class.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def _epoch_order(data: TrainData, config: TrainConfig, epoch: int) -> list[np.ndarray]:
    """Return the mini-batches of one epoch, shuffled by a generator seeded with (seed, epoch)."""
    order = np.random.default_rng([config.seed, epoch]).permutation(data.train_index)
    batches = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]

    # Batch norm cannot train on a batch of one window.
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()
    if config.max_batches_per_epoch is not None:
        batches = batches[:config.max_batches_per_epoch]
    return batches


@dataclass
class TrainResult:
    """Outcome of `train_model`; the model keeps the weights of ``best_epoch``.

    Attributes
    ----------
    history : list of dict
        Per epoch: ``epoch``, ``lr``, ``train_loss``, ``train_accuracy``, ``val_loss``,
        ``val_accuracy``, ``val_macro_f1``, ``val_kappa``, ``seconds``.
    best_epoch : int
        Epoch (from 1) with the best validation macro-F1, whose weights were kept.
    best_val_macro_f1 : float or None
    best_val_accuracy : float or None
        Highest validation accuracy of any epoch (as the original tool reports it).
    final_val_accuracy : float or None
        Validation accuracy after the last epoch run.
    epochs_run : int
    stopped_early : bool
        Whether early stopping ended the run before ``epochs``.
    train_seconds : float
        Time spent training and validating, summed over resumed parts.
    class_weights : list of float or None
        Loss weight of each class, when the loss was class-weighted.
    test : dict or None
        `evaluate_model` metrics of the kept weights on the test subjects.
    """

    history: list[dict[str, Any]]
    best_epoch: int
    best_val_macro_f1: float | None
    best_val_accuracy: float | None
    final_val_accuracy: float | None
    epochs_run: int
    stopped_early: bool
    train_seconds: float
    class_weights: list[float] | None = None
    test: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class InterruptFlag:
    """Turns the first Ctrl-C into a flag that a loop checks between mini-batches.

    A second Ctrl-C raises `KeyboardInterrupt` at once. Outside the main thread (a
    worker) signals cannot be caught, and the flag stays down.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("interrupt received: saving a checkpoint after this mini-batch "
                       "(press Ctrl-C again to stop at once)")

    def __enter__(self) -> InterruptFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _make_optimizer(model: nn.Module, config: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=config.learning_rate, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs,
                                                           eta_min=config.lr_min)
    return optimizer, scheduler


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@dataclass
class _State:
    """Everything of a run that changes while it trains, as the checkpoint stores it."""

    epoch: int = 0
    batch: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    best_epoch: int = 0
    best_macro_f1: float = -math.inf
    best_weights: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    finished: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0


def _checkpoint(model: nn.Module, optimizer: Any, scheduler: Any, state: _State,
                config: TrainConfig, data: TrainData, extra: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "kind": "training",
        "format": 1,
        "config": config.to_dict(),
        "split": data.split,
        "window_spec": data.spec.to_json(),
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rundir.capture_rng_state(),
        "state": {key: getattr(state, key) for key in _State.__dataclass_fields__
                  if key != "best_weights"},
        "best_weights": state.best_weights,
        "extra": extra or {},
    }


def _check_resumable(checkpoint: dict[str, Any], config: TrainConfig, data: TrainData, path: Path) -> None:
    if checkpoint.get("kind") != "training" or checkpoint.get("format") != 1 or "state" not in checkpoint:
        raise SleepnasError(f"corrupt checkpoint {path}: not a sleepnas training checkpoint")
    saved = {k: v for k, v in checkpoint["config"].items() if k not in _RESUME_FREE_KEYS}
    current = {k: v for k, v in config.to_dict().items() if k not in _RESUME_FREE_KEYS}
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise SleepnasError(f"cannot resume {path.parent}: its run used other training options "
                            f"({details}); resume with the same options or start a new run")
    if checkpoint["split"] != data.split:
        raise SleepnasError(f"cannot resume {path.parent}: its run used another subject split; "
                            f"resume with the same data, seed and folds")
    if checkpoint.get("window_spec") != data.spec.to_json():
        raise SleepnasError(f"cannot resume {path.parent}: its run used another window spec or "
                            f"normalization, so the recordings or channels changed; resume with the same data")


def _restore(checkpoint: dict[str, Any], model: nn.Module, optimizer: Any, scheduler: Any) -> _State:
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    rundir.restore_rng_state(checkpoint["rng"])
    state = _State(**checkpoint["state"])
    state.best_weights = checkpoint["best_weights"]
    return state


def train_model(model: nn.Module, data: TrainData, config: TrainConfig, *,
                run_dir: str | Path | None = None, resume: bool = False, log_every: int | None = None,
                batch_callback: Callable[[int, int], None] | None = None,
                checkpoint_extra: dict[str, Any] | None = None,
                progress_bar: bool | None = None) -> TrainResult:
    """Train ``model`` on the training subjects, keeping the epoch with the best validation macro-F1.

    Each epoch shuffles the training windows with a generator seeded by ``(seed, epoch)``,
    normalizes each mini-batch with ``data.spec``, and validates on the validation
    subjects. With ``run_dir``, a checkpoint is written after every epoch and the kept
    weights go to ``weights.pt`` at the end. The first Ctrl-C finishes the current
    mini-batch, writes a checkpoint there, and raises `KeyboardInterrupt`. A resumed
    run continues from that point and, on CPU, ends with the same weights, bit for
    bit, as a run never interrupted.

    Parameters
    ----------
    model : nn.Module
        Freshly built model (seed torch before building it for a reproducible run).
    data : TrainData
    config : TrainConfig
    run_dir : path-like, optional
        Where ``checkpoint.pt`` and ``weights.pt`` go.
    resume : bool
        Continue from ``run_dir/checkpoint.pt``; its options and split must match.
    log_every : int, optional
        Also log the running training loss every this many mini-batches.
    batch_callback : callable, optional
        Called as ``batch_callback(epoch, batch)`` after each mini-batch (both from 1).
    checkpoint_extra : dict, optional
        Tensors and plain values stored in the checkpoint under ``"extra"``.
    progress_bar : bool, optional
        Show bars; default as `sleepnas.runtime.utils.progress` decides.

    Returns
    -------
    TrainResult
    """
    device = resolve_device(config.device)
    previous_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        model.to(device)
        optimizer, scheduler = _make_optimizer(model, config)
        weights = class_weights(data.labels[data.train_index], len(data.stage_names)) \
            if config.class_weighted else None
        criterion = nn.CrossEntropyLoss(
            weight=None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device))
        state = _start(model, optimizer, scheduler, data, config, run_dir, resume)

        loop = _Loop(model, data, config, device, optimizer, scheduler, criterion, run_dir,
                     log_every, batch_callback, checkpoint_extra, progress_bar)
        with InterruptFlag() as interrupt:
            loop.interrupt = interrupt
            loop.run(state)
        return _finish(model, data, config, state, device, run_dir, weights)
    finally:
        torch.set_num_threads(previous_threads)


def _start(model: nn.Module, optimizer: Any, scheduler: Any, data: TrainData, config: TrainConfig,
           run_dir: str | Path | None, resume: bool) -> _State:
    if not resume:
        _seed_everything(config.seed)
        return _State()
    if run_dir is None:
        raise SleepnasError("resume needs the run directory that contains checkpoint.pt")
    path = Path(run_dir) / rundir.CHECKPOINT
    checkpoint = rundir.load_checkpoint(run_dir)
    _check_resumable(checkpoint, config, data, path)
    try:
        state = _restore(checkpoint, model, optimizer, scheduler)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise SleepnasError(f"corrupt checkpoint {path}: {str(err).splitlines()[0]}") from None
    logger.info("resuming %s at epoch %d, mini-batch %d", run_dir, state.epoch + 1, state.batch)
    return state


class _Loop:
    """The epoch loop of `train_model`, with the objects every step needs."""

    interrupt: InterruptFlag

    def __init__(self, model: nn.Module, data: TrainData, config: TrainConfig, device: torch.device,
                 optimizer: Any, scheduler: Any, criterion: nn.Module, run_dir: str | Path | None,
                 log_every: int | None, batch_callback: Callable[[int, int], None] | None,
                 extra: dict[str, Any] | None, progress_bar: bool | None) -> None:
        self.model, self.data, self.config, self.device = model, data, config, device
        self.optimizer, self.scheduler, self.criterion = optimizer, scheduler, criterion
        self.run_dir, self.log_every, self.batch_callback = run_dir, log_every, batch_callback
        self.extra, self.progress_bar = extra, progress_bar

    def save(self, state: _State) -> None:
        if self.run_dir is not None:
            rundir.save_checkpoint(self.run_dir, _checkpoint(
                self.model, self.optimizer, self.scheduler, state, self.config, self.data, self.extra))

    def run(self, state: _State) -> None:
        while not state.finished:
            started = time.perf_counter()
            try:
                self.train_epoch(state)
                self.validate(state)
            except (MemoryError, torch.OutOfMemoryError):
                kept = "the checkpoint of the last epoch is kept; " if self.run_dir is not None else ""
                raise SleepnasError(
                    f"out of memory at epoch {state.epoch + 1} with --batch-size {self.config.batch_size}: "
                    f"{kept}lower --batch-size or --init-channels, or use --preset small") from None
            state.train_seconds += time.perf_counter() - started
            state.history[-1]["seconds"] = round(time.perf_counter() - started, 3)
            self.save(state)
            if self.interrupt.requested and not state.finished:
                self._stop(state)

    def train_epoch(self, state: _State) -> None:
        config, epoch = self.config, state.epoch + 1
        batches = _epoch_order(self.data, config, epoch)
        self.model.train()
        if hasattr(self.model, "drop_path_prob"):
            self.model.drop_path_prob = config.drop_path_prob * (epoch - 1) / config.epochs
        started = time.perf_counter()
        steps = progress(range(state.batch, len(batches)), desc=f"epoch {epoch}/{config.epochs}",
                         total=len(batches) - state.batch, unit="batch", enabled=self.progress_bar)
        for b in steps:
            x, y = read_batch(self.data, batches[b], self.device)
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.model(x)
            loss = self.criterion(logits, y)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise SleepnasError(f"training diverged: the loss is {loss_value} at epoch {epoch}, "
                                    f"mini-batch {b + 1}; lower the learning rate (--lr)")
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
            self.optimizer.step()

            state.batch = b + 1
            state.loss_sum += loss_value * len(y)
            state.correct += int((logits.argmax(1) == y).sum())
            state.count += len(y)
            if self.log_every and state.batch % self.log_every == 0:
                logger.info("epoch %d batch %d/%d: train loss %.4f, %.1f s", epoch, state.batch,
                            len(batches), state.loss_sum / state.count, time.perf_counter() - started)
            if self.batch_callback is not None:
                self.batch_callback(epoch, state.batch)
            if self.interrupt.requested and state.batch < len(batches):
                self._stop(state)

    def _stop(self, state: _State) -> None:
        self.save(state)
        where = f" in {self.run_dir}" if self.run_dir is not None else ""
        logger.warning("stopped at epoch %d, mini-batch %d; checkpoint saved%s: continue with --resume",
                       state.epoch + 1, state.batch, where)
        raise KeyboardInterrupt

    def validate(self, state: _State) -> None:
        config = self.config
        epoch = state.epoch + 1
        lr = self.optimizer.param_groups[0]["lr"]
        val = evaluate_model(self.model, self.data, "val", batch_size=config.eval_batch_size,
                             device=self.device, per_subject=False)
        self.scheduler.step()
        macro_f1 = val["macro_f1"] if val["macro_f1"] is not None else -math.inf
        record = {"epoch": epoch, "lr": lr,
                  "train_loss": state.loss_sum / max(state.count, 1),
                  "train_accuracy": state.correct / max(state.count, 1),
                  "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                  "val_macro_f1": val["macro_f1"], "val_kappa": val["kappa"]}
        state.history.append(record)

        if macro_f1 > state.best_macro_f1 or state.best_weights is None:
            state.best_macro_f1, state.best_epoch, state.bad_epochs = macro_f1, epoch, 0
            state.best_weights = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        else:
            state.bad_epochs += 1
        state.epoch, state.batch, state.loss_sum, state.correct, state.count = epoch, 0, 0.0, 0, 0
        if config.patience is not None and state.bad_epochs >= config.patience and epoch < config.epochs:
            state.stopped_early = True
        state.finished = state.stopped_early or epoch >= config.epochs

        logger.info("epoch %d/%d: lr %.2e, train loss %.4f, train accuracy %.3f, val loss %.4f, "
                    "val accuracy %.3f, val macro-F1 %.3f%s", epoch, config.epochs, lr,
                    record["train_loss"], record["train_accuracy"], val["loss"], val["accuracy"],
                    val["macro_f1"] or 0.0, " (best)" if state.best_epoch == epoch else "")
        if state.stopped_early:
            logger.info("early stop: no better validation macro-F1 for %d epochs; keeping epoch %d",
                        config.patience, state.best_epoch)


def _finish(model: nn.Module, data: TrainData, config: TrainConfig, state: _State,
            device: torch.device, run_dir: str | Path | None, weights: np.ndarray | None) -> TrainResult:
    if state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    if run_dir is not None:
        rundir.save_weights(run_dir, model.state_dict())
    test = None
    if len(data.test_index):
        test = evaluate_model(model, data, "test", batch_size=config.eval_batch_size, device=device)
    val_accuracies = [r["val_accuracy"] for r in state.history if r["val_accuracy"] is not None]
    best_f1 = state.best_macro_f1 if math.isfinite(state.best_macro_f1) else None
    return TrainResult(
        history=state.history, best_epoch=state.best_epoch, best_val_macro_f1=best_f1,
        best_val_accuracy=max(val_accuracies) if val_accuracies else None,
        final_val_accuracy=state.history[-1]["val_accuracy"] if state.history else None,
        epochs_run=state.epoch, stopped_early=state.stopped_early,
        train_seconds=round(state.train_seconds, 3),
        class_weights=None if weights is None else [float(w) for w in weights], test=test)
