"""Tests of the DARTS arch step and the hardware cost term, on a toy supernet."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sleepnas.runtime.errors import SleepnasError
from sleepnas.search.darts import Architect
from sleepnas.search.penalty import CostPenalty


class ToySupernet(nn.Module):
    """Two mixed edges of three ops on 4 features; alphas shaped (edges, ops) like a supernet."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.edges = nn.ModuleList(
            nn.ModuleList([nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.Tanh()), nn.Identity()])
            for _ in range(2))
        self.classifier = nn.Linear(4, 3)
        for parameter in self.weights():
            with torch.no_grad():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.7)
        self.alphas_normal = nn.Parameter(1e-1 * torch.randn(1, 3, generator=generator))
        self.alphas_reduce = nn.Parameter(1e-1 * torch.randn(1, 3, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for edge, alphas in zip(self.edges, self.arch_parameters()):
            mix = torch.softmax(alphas[0], dim=-1)
            x = sum(w * op(x) for w, op in zip(mix, edge))
        return self.classifier(x)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas_normal, self.alphas_reduce]

    def weights(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("alphas")]

    def new(self) -> ToySupernet:
        return ToySupernet().to(dtype=self.classifier.weight.dtype)


class FixedCost:
    """A cost model whose op costs are fixed: expected cost = sum of softmax(alpha) . cost."""

    def __init__(self, latency_ms: list[float], flops: list[float]) -> None:
        self.latency_ms = torch.tensor(latency_ms, dtype=torch.float64)
        self.flops = torch.tensor(flops, dtype=torch.float64)

    def _expected(self, costs: torch.Tensor, *alphas: torch.Tensor) -> torch.Tensor:
        return sum((torch.softmax(a, dim=-1) * costs.to(a.dtype)).sum() for a in alphas)

    def expected_latency_ms(self, alphas_normal, alphas_reduce):
        return self._expected(self.latency_ms, alphas_normal, alphas_reduce)

    def expected_flops(self, alphas_normal, alphas_reduce):
        return self._expected(self.flops, alphas_normal, alphas_reduce)


def _batches(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x_train = torch.randn(16, 4, generator=generator, dtype=torch.float64)
    y_train = torch.randint(0, 3, (16,), generator=generator)
    x_val = torch.randn(16, 4, generator=generator, dtype=torch.float64)
    y_val = torch.randint(0, 3, (16,), generator=generator)
    return (x_train, y_train), (x_val, y_val)


def _model_with_momentum(train_batch, w_lr: float):
    model = ToySupernet().double()
    optimizer = torch.optim.SGD(model.weights(), lr=w_lr, momentum=0.9, weight_decay=3e-4)
    loss = nn.functional.cross_entropy(model(train_batch[0]), train_batch[1])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return model, optimizer


def _unrolled_val_loss(model, optimizer, alphas, train_batch, val_batch, w_lr, criterion):
    """L_val(w', alpha) with w' the virtual SGD step at ``alphas``, computed directly."""
    probe = model.new().double()
    probe.load_state_dict(model.state_dict())
    with torch.no_grad():
        for target, value in zip(probe.arch_parameters(), alphas):
            target.copy_(value)
    loss = criterion(probe(train_batch[0]), train_batch[1])
    grads = torch.autograd.grad(loss, probe.weights())
    with torch.no_grad():
        for weight, grad, original in zip(probe.weights(), grads, model.weights()):
            buffer = optimizer.state[original]["momentum_buffer"]
            weight.sub_(w_lr * (0.9 * buffer + grad + 3e-4 * weight))
        return float(criterion(probe(val_batch[0]), val_batch[1]))


def test_second_order_gradient_matches_finite_differences():
    train_batch, val_batch = _batches()
    w_lr = 0.5  # large, so the implicit term is a visible part of the gradient
    model, optimizer = _model_with_momentum(train_batch, w_lr)
    criterion = nn.functional.cross_entropy
    architect = Architect(model, criterion, unrolled=True)
    analytic = architect.arch_gradient(train_batch, val_batch, w_lr, optimizer)
    first_order = Architect(model, criterion, unrolled=False).arch_gradient(
        train_batch, val_batch, w_lr, optimizer)

    h = 1e-5
    base = [a.detach().clone() for a in model.arch_parameters()]
    for k, alpha in enumerate(base):
        numeric = torch.zeros_like(alpha)
        for index in range(alpha.numel()):
            plus = [b.clone() for b in base]
            minus = [b.clone() for b in base]
            plus[k].view(-1)[index] += h
            minus[k].view(-1)[index] -= h
            f_plus = _unrolled_val_loss(model, optimizer, plus, train_batch, val_batch, w_lr, criterion)
            f_minus = _unrolled_val_loss(model, optimizer, minus, train_batch, val_batch, w_lr, criterion)
            numeric.view(-1)[index] = (f_plus - f_minus) / (2 * h)
        torch.testing.assert_close(analytic[k], numeric, rtol=1e-3, atol=1e-6)
        # The check can fail: the first-order gradient misses the implicit term.
        assert (first_order[k] - numeric).abs().max() > 1e-2 * numeric.abs().max()


def test_second_order_leaves_weights_unchanged():
    train_batch, val_batch = _batches()
    model, optimizer = _model_with_momentum(train_batch, 0.1)
    before = [w.detach().clone() for w in model.weights()]
    Architect(model, nn.functional.cross_entropy, unrolled=True).step(
        train_batch, val_batch, 0.1, optimizer)
    for old, new in zip(before, model.weights()):
        torch.testing.assert_close(new.detach(), old, rtol=0, atol=1e-12)


def test_first_order_step_lowers_arch_loss():
    train_batch, val_batch = _batches()
    model = ToySupernet().double()
    architect = Architect(model, nn.functional.cross_entropy, alpha_lr=0.05)
    losses = [architect.step(train_batch, val_batch, 0.1) for _ in range(20)]
    assert losses[-1] < losses[0]


def test_penalty_without_budget_is_ratio_to_uniform():
    cost = FixedCost([4.0, 2.0, 0.0], [3e6, 1e6, 0.0])
    penalty = CostPenalty(cost, latency_weight=2.0)
    alphas = torch.zeros(1, 3, dtype=torch.float64)
    # At uniform weights E[lat] == E0[lat], so the term equals its weight.
    assert float(penalty(alphas, alphas)) == pytest.approx(2.0)
    skewed = torch.tensor([[10.0, 0.0, 0.0]], dtype=torch.float64)
    expected = 2.0 * float(cost.expected_latency_ms(skewed, skewed)) / 4.0
    assert float(penalty(skewed, skewed)) == pytest.approx(expected)


def test_penalty_with_budget_is_hinge():
    cost = FixedCost([4.0, 2.0, 0.0], [3e6, 1e6, 0.0])
    alphas = torch.zeros(1, 3, dtype=torch.float64)  # E[lat] = 4 ms, E[FLOPs] = 8/3 MFLOPs
    assert float(CostPenalty(cost, latency_weight=1.0, latency_budget_ms=5.0)(alphas, alphas)) == 0.0
    over = CostPenalty(cost, latency_weight=3.0, latency_budget_ms=2.0)(alphas, alphas)
    assert float(over) == pytest.approx(3.0 * (4.0 / 2.0 - 1.0))
    flops = CostPenalty(cost, flops_weight=1.0, flops_budget_mflops=2.0)(alphas, alphas)
    assert float(flops) == pytest.approx(8.0 / 3.0 / 2.0 - 1.0)


@pytest.mark.parametrize("budget", [0.0, -1.0, float("nan")])
def test_penalty_rejects_nonpositive_budget(budget):
    cost = FixedCost([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    with pytest.raises(SleepnasError, match="--latency-budget-ms"):
        CostPenalty(cost, latency_weight=1.0, latency_budget_ms=budget)
    with pytest.raises(SleepnasError, match="--flops-budget"):
        CostPenalty(cost, flops_weight=1.0, flops_budget_mflops=budget)


def test_penalty_moves_alphas_to_cheap_ops():
    train_batch, val_batch = _batches()
    cost = FixedCost([5.0, 5.0, 0.1], [0.0, 0.0, 0.0])
    results = {}
    for weight in (0.0, 10.0):
        model = ToySupernet().double()
        architect = Architect(model, nn.functional.cross_entropy, alpha_lr=0.05,
                              penalty=CostPenalty(cost, latency_weight=weight))
        for _ in range(30):
            architect.step(train_batch, val_batch, 0.1)
        with torch.no_grad():
            results[weight] = float(cost.expected_latency_ms(*model.arch_parameters()))
    assert results[10.0] < results[0.0]


@pytest.mark.slow
def test_latency_weight_lowers_predicted_latency(tmp_path, monkeypatch):
    from sleepnas.search.cost import CostModel
    from sleepnas.search.strategy import SearchConfig, make_strategy
    from tests.searchtools import TINY_OPTIONS, fake_cohort_loader, fixed_latency_table

    monkeypatch.setattr("sleepnas.runtime.store.load_cohort", fake_cohort_loader())
    monkeypatch.setenv("SLEEPNAS_PROGRESS", "0")
    op_ms = {"conv_1x1": 2.0, "conv_3x1": 5.0, "max_pool_3x1": 0.5, "identity": 0.1}
    predicted = {}
    for weight in (0.0, 50.0):
        config = SearchConfig(data_path=str(tmp_path), save_dir=str(tmp_path / f"w{weight}"),
                              **{**TINY_OPTIONS, "num_epochs": 1, "alpha_lr": 0.05,
                                 "latency_weight": weight, "collapse_guard": "off"})
        network = config.network_config()
        cost_model = CostModel(network, fixed_latency_table(network, op_ms))
        result = make_strategy(config, cost_model=cost_model, measure_latency=False).run()
        predicted[weight] = cost_model.genotype_latency_ms(result.genotype)
    assert predicted[50.0] < predicted[0.0]
    # More than one conv_3x1 edge (5 ms) saved, not a rounding difference.
    assert predicted[50.0] < predicted[0.0] - 5.0


def test_collapse_guard_caps_and_logs(caplog):
    from sleepnas.search.collapse import CollapseGuard, parameter_free_count
    from sleepnas.search.ops import OP_NAMES

    alphas = torch.zeros(14, len(OP_NAMES))
    alphas[:, OP_NAMES.index("identity")] = 3.0
    alphas[:, OP_NAMES.index("max_pool_3x1")] = 2.0
    alphas[:, OP_NAMES.index("conv_3x1")] = 1.0
    with caplog.at_level("INFO", logger="sleepnas"):
        genotype = CollapseGuard(OP_NAMES, 4, max_parameter_free=2).derive(alphas, alphas)
    assert parameter_free_count(genotype.normal) == 2
    assert parameter_free_count(genotype.reduce) == 2
    assert [op for op, _ in genotype.normal].count("conv_3x1") == 6
    assert "collapse guard: normal cell had 8 parameter-free ops, capped to 2" in caplog.text

    plain = CollapseGuard(OP_NAMES, 4, mode="off").derive(alphas, alphas)
    assert parameter_free_count(plain.normal) == 8


def test_collapse_guard_stops_and_logs(caplog):
    from sleepnas.search.collapse import CollapseGuard
    from sleepnas.search.ops import OP_NAMES

    alphas = torch.zeros(14, len(OP_NAMES))
    alphas[:, OP_NAMES.index("identity")] = 3.0
    guard = CollapseGuard(OP_NAMES, 4, max_parameter_free=2, mode="stop")
    genotype = guard.derive(alphas, alphas)
    with caplog.at_level("WARNING", logger="sleepnas"):
        assert guard.should_stop(genotype)
    assert "stopping the search early" in caplog.text
    assert not guard.should_stop(CollapseGuard(OP_NAMES, 4).derive(alphas, alphas))


def test_collapse_guard_leaves_healthy_cells():
    from sleepnas.search.collapse import CollapseGuard
    from sleepnas.search.genotype import derive
    from sleepnas.search.ops import OP_NAMES

    alphas = torch.zeros(14, len(OP_NAMES))
    alphas[:, OP_NAMES.index("sep_conv_3x1")] = 2.0
    alphas[0, OP_NAMES.index("identity")] = 4.0
    assert CollapseGuard(OP_NAMES, 4).derive(alphas, alphas) == derive(alphas, alphas, OP_NAMES, 4)
