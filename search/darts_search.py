"""The DARTS search strategy: the epoch loop around `sleepnas.search.darts.Architect`.

Each mini-batch takes one arch step on a batch of the arch subjects, then one SGD step
of the weights on a batch of the weight subjects, as in Liu et al., "DARTS:
Differentiable Architecture Search", ICLR 2019. The weights' learning rate follows a
cosine from ``w_lr`` to ``w_lr_min`` over the search epochs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from sleepnas.runtime.utils import progress
from sleepnas.search.collapse import CollapseGuard
from sleepnas.search.darts import Architect, clip_weight_gradients
from sleepnas.search.dataset import read_batch
from sleepnas.search.penalty import CostPenalty
from sleepnas.search.strategy import SearchContext, SearchStrategy

logger = logging.getLogger(__name__)

#: Arch subjects' windows the per-epoch validation reads, at most (a fixed seeded sample).
MAX_EVAL_WINDOWS = 2048


@dataclass
class _EpochState:
    """The position in the search and the running sums of the current epoch."""

    epoch: int = 0
    batch: int = 0
    loss_sum: float = 0.0
    arch_loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False


def _batches(index: np.ndarray, batch_size: int, seed: list[int]) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(index)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    # Batch norm cannot train on a batch of one window.
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()
    return batches


class DartsSearch(SearchStrategy):
    """DARTS, first order or second order (``config.unrolled``), hardware-aware.

    The arch loss is the cross-entropy (class-weighted with ``config.class_weighted``)
    plus `CostPenalty` on the expected latency and FLOPs. After each epoch the genotype
    is derived through `CollapseGuard`, logged, and a checkpoint is written.
    """

    name = "darts"

    def _run(self, context: SearchContext) -> tuple[Any, list[dict[str, Any]]]:
        from sleepnas.search.supernet import Supernet
        from sleepnas.search.training import class_weights

        config, device, data = context.config, context.device, context.data.search
        net = config.network_config()
        torch.manual_seed(config.seed)
        model = Supernet(net, partial_channels=config.partial_channels,
                         checkpoint_cells=config.checkpoint_cells).to(device)
        weights = None
        if config.class_weighted:
            weights = torch.tensor(class_weights(data.labels[data.train_index], net.n_classes),
                                   dtype=torch.float32, device=device)
        criterion = nn.CrossEntropyLoss(weight=weights)

        w_optimizer = torch.optim.SGD(model.weights(), lr=config.w_lr, momentum=config.w_momentum,
                                      weight_decay=config.w_weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(w_optimizer, T_max=config.num_epochs,
                                                               eta_min=config.w_lr_min)
        cost_model = self.cost_model()
        penalty = CostPenalty(cost_model, latency_weight=config.latency_weight,
                              latency_budget_ms=config.latency_budget_ms,
                              flops_weight=config.flops_weight, flops_budget_mflops=config.flops_budget)
        architect = Architect(model, criterion, alpha_lr=config.alpha_lr,
                              alpha_weight_decay=config.alpha_weight_decay,
                              w_momentum=config.w_momentum, w_weight_decay=config.w_weight_decay,
                              unrolled=config.unrolled, penalty=penalty)
        guard = CollapseGuard(net.ops, net.num_nodes, max_parameter_free=config.max_parameter_free,
                              mode=config.collapse_guard)
        loop = _SearchLoop(context, model, criterion, w_optimizer, scheduler, architect, penalty, guard)

        state = _EpochState()
        if context.checkpoint is not None:
            state = loop.restore(context.checkpoint)
        loop.run(state)
        genotype = guard.derive(*model.arch_parameters()[:2])
        self._plot_history(context, state.history, net.ops)
        return genotype, state.history

    def _plot_history(self, context: SearchContext, history: list[dict[str, Any]], ops: tuple[str, ...]) -> None:
        try:
            from sleepnas.search.plots import plot_arch_weights

            plot_arch_weights(history, ops, context.run_dir / "arch_weights.png")
        except ImportError as err:
            logger.warning("no arch weight plot: %s (install matplotlib)", err)


class _SearchLoop:
    """The epoch loop of `DartsSearch`, with the objects every step needs."""

    def __init__(self, context: SearchContext, model: nn.Module, criterion: nn.Module,
                 w_optimizer: torch.optim.Optimizer, scheduler: Any, architect: Architect,
                 penalty: CostPenalty, guard: CollapseGuard) -> None:
        self.context, self.config = context, context.config
        self.model, self.criterion = model, criterion
        self.w_optimizer, self.scheduler, self.architect = w_optimizer, scheduler, architect
        self.penalty, self.guard = penalty, guard
        data = context.data.search
        self.data = data
        eval_index = data.val_index
        if len(eval_index) > MAX_EVAL_WINDOWS:
            rng = np.random.default_rng([self.config.seed, 2])
            eval_index = np.sort(rng.choice(eval_index, size=MAX_EVAL_WINDOWS, replace=False))
        self.eval_index = eval_index

    def checkpoint_state(self, state: _EpochState) -> dict[str, Any]:
        return {
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "w_optimizer": self.w_optimizer.state_dict(),
            "alpha_optimizer": self.architect.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state": asdict(state),
        }

    def restore(self, saved: dict[str, Any]) -> _EpochState:
        self.model.load_state_dict(saved["model"])
        self.w_optimizer.load_state_dict(saved["w_optimizer"])
        self.architect.optimizer.load_state_dict(saved["alpha_optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        state = _EpochState(**saved["state"])
        logger.info("resuming the search at epoch %d, mini-batch %d", state.epoch + 1, state.batch)
        return state

    def run(self, state: _EpochState) -> None:
        while state.epoch < self.config.num_epochs and not state.stopped_early:
            self.train_epoch(state)
            self.end_epoch(state)
            self.context.save_checkpoint(self.checkpoint_state(state))

    def _save_and_stop(self, state: _EpochState) -> None:
        self.context.save_checkpoint(self.checkpoint_state(state))
        logger.warning("checkpoint saved at epoch %d, mini-batch %d", state.epoch + 1, state.batch)
        raise KeyboardInterrupt

    def train_epoch(self, state: _EpochState) -> None:
        config, data, device = self.config, self.data, self.context.device
        epoch = state.epoch + 1
        weight_batches = _batches(data.train_index, config.batch_size, [config.seed, epoch, 0])
        arch_batches = _batches(data.val_index, config.batch_size, [config.seed, epoch, 1])
        w_lr = self.scheduler.get_last_lr()[0]
        self.model.train()
        steps = progress(range(state.batch, len(weight_batches)), desc=f"search epoch {epoch}/{config.num_epochs}",
                         total=len(weight_batches) - state.batch, unit="batch")
        for b in steps:
            if self.context.interrupt.requested:
                self._save_and_stop(state)
            train_batch = read_batch(data, weight_batches[b], device)
            arch_batch = read_batch(data, arch_batches[b % len(arch_batches)], device)
            state.arch_loss_sum += self.architect.step(train_batch, arch_batch, w_lr, self.w_optimizer)

            self.w_optimizer.zero_grad(set_to_none=True)
            logits = self.model(train_batch[0])
            loss = self.criterion(logits, train_batch[1])
            loss.backward()
            clip_weight_gradients(self.model.weights(), config.grad_clip)
            self.w_optimizer.step()

            state.loss_sum += float(loss.detach()) * len(train_batch[1])
            state.correct += int((logits.argmax(1) == train_batch[1]).sum())
            state.count += len(train_batch[1])
            state.batch = b + 1
            if config.print_freq and state.batch % config.print_freq == 0:
                logger.info("epoch %d batch %d/%d: train loss %.4f, arch loss %.4f", epoch, state.batch,
                            len(weight_batches), state.loss_sum / state.count,
                            state.arch_loss_sum / state.batch)

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Return the loss and accuracy of the supernet on the arch subjects (a sample)."""
        self.model.eval()
        loss_sum, correct = 0.0, 0
        for start in range(0, len(self.eval_index), 128):
            x, y = read_batch(self.data, self.eval_index[start:start + 128], self.context.device)
            logits = self.model(x)
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
        self.model.train()
        n = max(len(self.eval_index), 1)
        return loss_sum / n, correct / n

    def end_epoch(self, state: _EpochState) -> None:
        started = time.perf_counter()
        val_loss, val_accuracy = self.validate()
        alphas = self.model.arch_parameters()[:2]
        genotype = self.guard.derive(*alphas)
        costs = self.penalty.expected_costs(*alphas)
        record = {
            "epoch": state.epoch + 1,
            "lr": self.scheduler.get_last_lr()[0],
            "train_loss": state.loss_sum / max(state.count, 1),
            "train_accuracy": state.correct / max(state.count, 1),
            "arch_loss": state.arch_loss_sum / max(state.batch, 1),
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            **costs,
            "genotype": genotype.to_dict(),
            "weights_normal": torch.softmax(alphas[0].detach().cpu().double(), -1).tolist(),
            "weights_reduce": torch.softmax(alphas[1].detach().cpu().double(), -1).tolist(),
        }
        cost_model = self.penalty.cost_model
        record["genotype_mflops"] = cost_model.genotype_flops(genotype) / 1e6 if cost_model else None
        state.history.append(record)
        latency = costs["expected_latency_ms"]
        logger.info("search epoch %d/%d: train loss %.4f acc %.3f, arch loss %.4f, val loss %.4f "
                    "acc %.3f, expected latency %s, expected %.2f MFLOPs; genotype normal %s reduce %s",
                    record["epoch"], self.config.num_epochs, record["train_loss"],
                    record["train_accuracy"], record["arch_loss"], val_loss, val_accuracy,
                    "n/a" if latency is None else f"{latency:.3f} ms", costs["expected_mflops"] or 0.0,
                    _edges_text(genotype.normal), _edges_text(genotype.reduce))

        self.scheduler.step()
        state.epoch += 1
        state.batch = 0
        state.loss_sum = state.arch_loss_sum = 0.0
        state.correct = state.count = 0
        if self.guard.should_stop(genotype):
            state.stopped_early = True
        logger.debug("end of epoch took %.2f s", time.perf_counter() - started)


def _edges_text(edges: tuple[tuple[str, int], ...]) -> str:
    return " ".join(f"{op}<-{j}" for op, j in edges)
