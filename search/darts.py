"""The DARTS arch step, first and second order.

Liu, Simonyan and Yang, "DARTS: Differentiable Architecture Search", ICLR 2019. The
supernet's weights ``w`` are trained on one part of the training subjects and its arch
parameters ``alpha`` on the other. The arch step descends the validation loss
``L_val(w*(alpha), alpha)``. First order takes ``w*`` as the current weights. Second order
(``unrolled``) takes one virtual SGD step ``w' = w - xi * grad_w L_train(w, alpha)`` and uses

    grad_alpha L_val(w', alpha) - xi * H v,   v = grad_w' L_val(w', alpha),
    H v = (grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)) / (2 eps),
    w+- = w +- eps v,   eps = 0.01 / ||v||

where ``H = grad^2_{alpha,w} L_train``: the Hessian-vector product by central finite
differences, as in the paper's equation 8.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import nn

from sleepnas.search.penalty import CostPenalty

logger = logging.getLogger(__name__)

#: Scale of the finite-difference step of the Hessian-vector product: eps = 0.01 / ||v||.
HVP_SCALE = 0.01


class SearchableModel(Protocol):
    """Interface of a supernet that the architect steps (`sleepnas.search.supernet.Supernet`)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def arch_parameters(self) -> Sequence[torch.Tensor]: ...

    def weights(self) -> Sequence[torch.Tensor]: ...

    def new(self) -> SearchableModel: ...


Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Architect:
    """Updates a supernet's arch parameters with Adam on the arch loss.

    The arch loss is the criterion on a batch of the arch part of the training subjects,
    plus the hardware cost term of ``penalty`` (a function of the alphas only).

    Parameters
    ----------
    model : supernet
        Exposes ``arch_parameters()``, ``weights()`` and ``new()`` (a fresh supernet of the
        same shape, used for the virtual step of second order); ``model(x)`` returns logits.
    criterion : callable
        ``criterion(logits, targets) -> scalar loss`` (cross-entropy, maybe class-weighted).
    alpha_lr : float
        Adam learning rate of the arch parameters.
    alpha_betas : tuple of float
        Adam betas.
    alpha_weight_decay : float
        Adam weight decay of the arch parameters.
    w_momentum, w_weight_decay : float
        Momentum and weight decay of the weights' SGD, repeated in the virtual step.
    unrolled : bool
        Second order (virtual step) instead of first order.
    penalty : CostPenalty or None
        Hardware cost term added to the arch loss.
    """

    def __init__(self, model: SearchableModel, criterion: Criterion, *, alpha_lr: float = 3e-4,
                 alpha_betas: tuple[float, float] = (0.5, 0.999), alpha_weight_decay: float = 1e-3,
                 w_momentum: float = 0.9, w_weight_decay: float = 3e-4, unrolled: bool = False,
                 penalty: CostPenalty | None = None) -> None:
        self.model = model
        self.criterion = criterion
        self.w_momentum = w_momentum
        self.w_weight_decay = w_weight_decay
        self.unrolled = unrolled
        self.penalty = penalty
        self.optimizer = torch.optim.Adam(list(model.arch_parameters()), lr=alpha_lr,
                                          betas=alpha_betas, weight_decay=alpha_weight_decay)

    def step(self, train_batch: tuple[torch.Tensor, torch.Tensor],
             arch_batch: tuple[torch.Tensor, torch.Tensor], w_lr: float,
             w_optimizer: torch.optim.Optimizer | None = None) -> float:
        """Take one arch step and return the arch loss (criterion plus penalty) as a float.

        Parameters
        ----------
        train_batch : (inputs, targets)
            A batch of the weights' part, used by second order only.
        arch_batch : (inputs, targets)
            A batch of the arch part.
        w_lr : float
            The weights' current learning rate: ``xi`` of the virtual step.
        w_optimizer : torch.optim.SGD or None
            The weights' optimizer, whose momentum buffers the virtual step repeats.
        """
        self.optimizer.zero_grad(set_to_none=True)
        if self.unrolled:
            loss = self._backward_second_order(train_batch, arch_batch, w_lr, w_optimizer)
        else:
            loss = self._backward_first_order(arch_batch)
        self.optimizer.step()
        return loss

    def arch_gradient(self, train_batch: tuple[torch.Tensor, torch.Tensor],
                      arch_batch: tuple[torch.Tensor, torch.Tensor], w_lr: float,
                      w_optimizer: torch.optim.Optimizer | None = None) -> list[torch.Tensor]:
        """Return the gradient of the arch loss, one tensor per arch parameter, without a step."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.unrolled:
            self._backward_second_order(train_batch, arch_batch, w_lr, w_optimizer)
        else:
            self._backward_first_order(arch_batch)
        return [a.grad.detach().clone() for a in self.model.arch_parameters()]

    def _penalty(self, alphas: Sequence[torch.Tensor]) -> torch.Tensor | None:
        if self.penalty is None or not self.penalty.active:
            return None
        return self.penalty(alphas[0], alphas[1])

    def _backward_first_order(self, arch_batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        inputs, targets = arch_batch
        loss = self.criterion(self.model(inputs), targets)
        penalty = self._penalty(self.model.arch_parameters())
        if penalty is not None:
            loss = loss + penalty
        alphas = list(self.model.arch_parameters())
        grads = torch.autograd.grad(loss, alphas)
        for alpha, grad in zip(alphas, grads):
            alpha.grad = grad
        return float(loss.detach())

    def _backward_second_order(self, train_batch: tuple[torch.Tensor, torch.Tensor],
                               arch_batch: tuple[torch.Tensor, torch.Tensor], w_lr: float,
                               w_optimizer: torch.optim.Optimizer | None) -> float:
        # Virtual step w' = w - xi * (momentum * buffer + grad_w L_train + wd * w).
        unrolled = self._unrolled_model(train_batch, w_lr, w_optimizer)

        # Gradient of L_val at w', in the alphas and in the virtual weights.
        inputs, targets = arch_batch
        val_loss = self.criterion(unrolled(inputs), targets)
        unrolled_alphas = list(unrolled.arch_parameters())
        unrolled_weights = list(unrolled.weights())
        grads = torch.autograd.grad(val_loss, unrolled_alphas + unrolled_weights, allow_unused=True)
        d_alpha = [_zero_if_none(g, a) for g, a in zip(grads[:len(unrolled_alphas)], unrolled_alphas)]
        vector = [_zero_if_none(g, w) for g, w in zip(grads[len(unrolled_alphas):], unrolled_weights)]
        del unrolled

        # Implicit part: d_alpha -= xi * grad^2_{alpha,w} L_train(w, alpha) . v
        hessian_vector = self._hessian_vector_product(vector, train_batch)
        loss = float(val_loss.detach())
        alphas = list(self.model.arch_parameters())
        penalty = self._penalty(alphas)
        penalty_grads = (torch.autograd.grad(penalty, alphas) if penalty is not None
                         else [None] * len(alphas))
        for alpha, grad, implicit, extra in zip(alphas, d_alpha, hessian_vector, penalty_grads):
            total = grad - w_lr * implicit
            if extra is not None:
                total = total + extra
            alpha.grad = total.detach()
        if penalty is not None:
            loss += float(penalty.detach())
        return loss

    def _unrolled_model(self, train_batch: tuple[torch.Tensor, torch.Tensor], w_lr: float,
                        w_optimizer: torch.optim.Optimizer | None) -> SearchableModel:
        inputs, targets = train_batch
        weights = list(self.model.weights())
        loss = self.criterion(self.model(inputs), targets)
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
        virtual: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for weight, grad in zip(weights, grads):
                step = _zero_if_none(grad, weight) + self.w_weight_decay * weight
                buffer = _momentum_buffer(w_optimizer, weight)
                if buffer is not None:
                    step = step + self.w_momentum * buffer
                virtual[id(weight)] = weight - w_lr * step
        return _copy_with_weights(self.model, virtual)

    def _hessian_vector_product(self, vector: list[torch.Tensor],
                                train_batch: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
        inputs, targets = train_batch
        weights = list(self.model.weights())
        alphas = list(self.model.arch_parameters())
        norm = torch.sqrt(sum((v.double() ** 2).sum() for v in vector))
        if float(norm) == 0.0:
            return [torch.zeros_like(a) for a in alphas]
        eps = HVP_SCALE / float(norm)

        with torch.no_grad():
            for w, v in zip(weights, vector):
                w.add_(v, alpha=eps)
        grads_plus = torch.autograd.grad(self.criterion(self.model(inputs), targets), alphas)
        with torch.no_grad():
            for w, v in zip(weights, vector):
                w.sub_(v, alpha=2 * eps)
        grads_minus = torch.autograd.grad(self.criterion(self.model(inputs), targets), alphas)
        with torch.no_grad():
            for w, v in zip(weights, vector):
                w.add_(v, alpha=eps)
        return [(p - m) / (2 * eps) for p, m in zip(grads_plus, grads_minus)]


def _zero_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _momentum_buffer(optimizer: torch.optim.Optimizer | None, weight: torch.Tensor) -> torch.Tensor | None:
    if optimizer is None:
        return None
    state = optimizer.state.get(weight, {})
    return state.get("momentum_buffer")


def _copy_with_weights(model: SearchableModel, virtual: dict[int, torch.Tensor]) -> SearchableModel:
    """Return ``model.new()`` holding ``model``'s state with the weights replaced by ``virtual``."""
    copy = model.new()
    first = next(iter(model.weights()))
    copy.to(device=first.device)
    state = model.state_dict()
    for name, parameter in model.named_parameters():
        if id(parameter) in virtual:
            state[name] = virtual[id(parameter)]
    copy.load_state_dict(state)
    with torch.no_grad():
        for target, source in zip(copy.arch_parameters(), model.arch_parameters()):
            target.copy_(source)
    copy.train(model.training)
    return copy


def clip_weight_gradients(weights: Sequence[nn.Parameter], max_norm: float) -> float:
    """Clip the weights' gradient norm to ``max_norm`` in place; return the norm before."""
    return float(nn.utils.clip_grad_norm_(list(weights), max_norm))
