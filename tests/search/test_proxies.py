"""Tests of the zero-cost proxies: hand-checked values, every weight kind, finite scores."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sleepnas.runtime.errors import SleepnasError
from sleepnas.search.genotype import Genotype, random_genotype
from sleepnas.search.network import Network, network_config
from sleepnas.search.proxies import (PROXY_NAMES, compute_proxies, grad_norm_per_weight, jacob_cov,
                                     scored_weights, snip_per_weight, synflow_per_weight)
from sleepnas.search.ops import OP_NAMES

TINY = dict(init_channels=8, num_cells=3, num_nodes=2, n_times=128)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny tensors run faster on one thread, and a loaded machine makes more threads slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(n: int = 4, n_times: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 7, n_times, generator=generator), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2][:n])


def _linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 3, bias=False))


def test_snip_matches_hand_count():
    model = _linear_model()
    x, y = torch.randn(4, 2, 3), torch.tensor([0, 1, 2, 0])
    loss = F.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, [model[1].weight])
    expected = float((model[1].weight.detach() * grad).abs().sum())
    assert snip_per_weight(model, x, y)["1.weight"] == pytest.approx(expected)
    assert grad_norm_per_weight(model, x, y)["1.weight"] == pytest.approx(float(grad.norm()))


def test_synflow_of_linear_is_weight_sum():
    # R = sum_j sum_i |w_ji| on an all-ones input, so w * dR/dw sums to sum |w|.
    model = _linear_model()
    score = synflow_per_weight(model, torch.randn(2, 2, 3))["1.weight"]
    assert score == pytest.approx(float(model[1].weight.detach().abs().sum()))


def test_scores_every_weight_kind():
    genotype = Genotype((("lstm", 0), ("attention", 1), ("conv_3x1", 0), ("sep_conv_3x1", 2)),
                        (("lstm", 0), ("attention", 1), ("identity", 1), ("conv_5x1", 2)), 2)
    net = Network(network_config("small", **TINY), genotype)
    names = set(scored_weights(net))
    assert "cells.0.ops.0.lstm.weight_ih_l0" in names
    assert "cells.0.ops.0.lstm.weight_hh_l0_reverse" in names
    assert "cells.0.ops.1.qkv.weight" in names
    assert "cells.0.ops.1.proj.weight" in names
    assert "cells.0.ops.2.op.1.weight" in names
    assert "head.classifier.weight" in names
    x, y = _batch()
    snip = snip_per_weight(net, x, y)
    synflow = synflow_per_weight(net, x)
    for name in ("cells.0.ops.0.lstm.weight_ih_l0", "cells.0.ops.0.lstm.weight_hh_l0_reverse",
                 "cells.0.ops.1.qkv.weight", "cells.0.ops.1.proj.weight", "head.classifier.weight"):
        assert snip[name] > 0, name
        assert synflow[name] != 0, name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_proxies_finite_for_random_genotypes(seed):
    config = network_config("small", **TINY)
    torch.manual_seed(seed)
    net = Network(config, random_genotype(OP_NAMES, 2, seed=seed))
    x, y = _batch()
    scores = compute_proxies(net, x, y)
    assert list(scores) == list(PROXY_NAMES)
    for name, value in scores.items():
        assert math.isfinite(value), name
    assert scores["snip"] > 0
    assert scores["grad_norm"] > 0
    assert scores["fisher"] >= 0


def test_proxies_leave_model_unchanged():
    net = Network(network_config("small", **TINY), random_genotype(OP_NAMES, 2, seed=3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    compute_proxies(net, *_batch())
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in net.parameters())


def test_proxies_seeded():
    net = Network(network_config("small", **TINY, dropout=0.5), random_genotype(OP_NAMES, 2, seed=3))
    x, y = _batch()
    assert compute_proxies(net, x, y, ["snip"], seed=1) == compute_proxies(net, x, y, ["snip"], seed=1)


def test_jacob_cov_needs_two_windows():
    net = _linear_model()
    with pytest.raises(SleepnasError, match=r"invalid batch of 1 window\(s\) for jacob_cov"):
        jacob_cov(net, torch.randn(1, 2, 3))


def test_unknown_proxy():
    with pytest.raises(SleepnasError, match="unknown proxy 'naswot': expected one of snip, grasp"):
        compute_proxies(_linear_model(), torch.randn(2, 2, 3), torch.tensor([0, 1]), ["naswot"])


def test_synflow_unnormalized_saturates_lstm():
    genotype = Genotype((("lstm", 0), ("lstm", 1), ("lstm", 0), ("lstm", 2)),
                        (("lstm", 0), ("lstm", 1), ("lstm", 0), ("lstm", 2)), 2)
    net = Network(network_config("small", **TINY), genotype)
    x, _ = _batch()
    name = "cells.0.ops.0.lstm.weight_ih_l0"
    assert synflow_per_weight(net, x, normalize=False)[name] == 0.0
    assert synflow_per_weight(net, x)[name] > 0.0
