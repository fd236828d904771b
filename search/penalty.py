"""The hardware cost term that makes the DARTS arch loss prefer cheap genotypes."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import torch

from sleepnas.runtime.errors import SleepnasError

logger = logging.getLogger(__name__)


class ExpectedCost(Protocol):
    """Interface of a cost model with expected costs differentiable in the alphas."""

    def expected_latency_ms(self, alphas_normal: torch.Tensor,
                            alphas_reduce: torch.Tensor) -> torch.Tensor: ...

    def expected_flops(self, alphas_normal: torch.Tensor,
                       alphas_reduce: torch.Tensor) -> torch.Tensor: ...


def check_budget(name: str, value: float | None) -> float | None:
    """Return ``value`` if it is ``None`` or a positive finite number, else raise."""
    if value is None:
        return None
    value = float(value)
    if not value > 0 or value == float("inf"):
        raise SleepnasError(f"invalid {name} {value!r}: expected a budget > 0, or no budget")
    return value


class CostPenalty:
    """Expected latency and FLOPs of a supernet as a term of the arch loss.

    For the latency, with weight ``w`` and expected latency ``E[lat]`` (the softmax-weighted
    sum of op latencies over all edges, from the cost model)::

        penalty = w * max(0, E[lat] / budget - 1)     with a budget
        penalty = w * E[lat] / E0[lat]                without one

    where ``E0[lat]`` is the expected latency at uniform arch weights (all alphas 0),
    computed once. The FLOPs term has the same form, in MFLOPs (10**6 FLOPs, one fused
    multiply-add counted as one FLOP). The two terms add up. With a budget the term is zero
    while the supernet is within the budget, so it only pushes when the budget is exceeded.

    Parameters
    ----------
    cost_model : object
        Has ``expected_latency_ms(alphas_normal, alphas_reduce)`` and
        ``expected_flops(alphas_normal, alphas_reduce)`` returning scalar tensors that are
        differentiable in the alphas (`sleepnas.search.cost.CostModel`).
    latency_weight, flops_weight : float
        Weights ``w`` of the two terms; 0 turns a term off.
    latency_budget_ms : float or None
        Latency budget in milliseconds.
    flops_budget_mflops : float or None
        FLOPs budget in MFLOPs.
    """

    def __init__(self, cost_model: ExpectedCost | None, *, latency_weight: float = 0.0,
                 latency_budget_ms: float | None = None, flops_weight: float = 0.0,
                 flops_budget_mflops: float | None = None) -> None:
        if latency_weight < 0 or flops_weight < 0:
            bad = "--latency-weight" if latency_weight < 0 else "--flops-weight"
            value = latency_weight if latency_weight < 0 else flops_weight
            raise SleepnasError(f"invalid {bad} {value!r}: expected a weight >= 0")
        self.cost_model = cost_model
        self.latency_weight = float(latency_weight)
        self.flops_weight = float(flops_weight)
        self.latency_budget_ms = check_budget("--latency-budget-ms", latency_budget_ms)
        self.flops_budget_mflops = check_budget("--flops-budget", flops_budget_mflops)
        if self.active and cost_model is None:
            raise SleepnasError("a latency or FLOPs weight > 0 needs a cost model")
        self._uniform_latency_ms: float | None = None
        self._uniform_mflops: float | None = None

    @property
    def active(self) -> bool:
        """Whether any term has a weight above 0."""
        return self.latency_weight > 0 or self.flops_weight > 0

    def __call__(self, alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor) -> torch.Tensor:
        """Return the penalty, a scalar tensor differentiable in the alphas (0 when inactive)."""
        total = alphas_normal.new_zeros(())
        if self.latency_weight > 0:
            latency = self.cost_model.expected_latency_ms(alphas_normal, alphas_reduce)
            total = total + self.latency_weight * self._term(
                latency, self.latency_budget_ms, "_uniform_latency_ms",
                self.cost_model.expected_latency_ms, alphas_normal, alphas_reduce)
        if self.flops_weight > 0:
            mflops = self.cost_model.expected_flops(alphas_normal, alphas_reduce) / 1e6
            total = total + self.flops_weight * self._term(
                mflops, self.flops_budget_mflops, "_uniform_mflops",
                lambda a, b: self.cost_model.expected_flops(a, b) / 1e6,
                alphas_normal, alphas_reduce)
        return total

    def _term(self, value: torch.Tensor, budget: float | None, cache: str, expected,
              alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor) -> torch.Tensor:
        if budget is not None:
            return torch.clamp(value / budget - 1.0, min=0.0)
        reference = getattr(self, cache)
        if reference is None:
            # E0 is the same expectation at uniform arch weights: a constant.
            with torch.no_grad():
                reference = float(expected(torch.zeros_like(alphas_normal),
                                           torch.zeros_like(alphas_reduce)))
            setattr(self, cache, reference)
        return value / reference

    def expected_costs(self, alphas_normal: torch.Tensor,
                       alphas_reduce: torch.Tensor) -> dict[str, Any]:
        """Return ``{"expected_latency_ms", "expected_mflops"}`` as floats (None if unavailable)."""
        out: dict[str, Any] = {"expected_latency_ms": None, "expected_mflops": None}
        if self.cost_model is None:
            return out
        with torch.no_grad():
            try:
                out["expected_latency_ms"] = float(
                    self.cost_model.expected_latency_ms(alphas_normal, alphas_reduce))
            except SleepnasError as err:
                logger.debug("expected latency unavailable: %s", err)
            out["expected_mflops"] = float(
                self.cost_model.expected_flops(alphas_normal, alphas_reduce)) / 1e6
        return out
