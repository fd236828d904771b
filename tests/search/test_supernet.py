"""Tests of the supernet: mixed ops, arch parameters, partial channels, derivation."""

from __future__ import annotations

import pytest
import torch

from sleepnas.runtime.errors import SleepnasError
from sleepnas.search.genotype import edge_sources
from sleepnas.search.network import network_config
from sleepnas.search.supernet import MixedOp, Supernet, channel_shuffle

OPS = ("conv_3x1", "max_pool_3x1", "lstm", "attention", "identity", "zero")
TINY = dict(init_channels=8, num_cells=3, num_nodes=2, n_times=128, ops=OPS)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny tensors run faster on one thread, and a loaded machine makes more threads slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _supernet(**kwargs) -> Supernet:
    torch.manual_seed(0)
    return Supernet(network_config("small", **TINY), **kwargs)


def test_arch_parameter_shapes():
    net = _supernet()
    assert net.alphas_normal.shape == (5, len(OPS))
    assert net.alphas_reduce.shape == (5, len(OPS))
    assert net.arch_parameters() == [net.alphas_normal, net.alphas_reduce]


def test_weights_exclude_arch_parameters():
    net = _supernet()
    weights = net.weights()
    arch = {id(p) for p in net.arch_parameters()}
    assert all(id(p) not in arch for p in weights)
    assert len(weights) + 2 == len(list(net.parameters()))


@pytest.mark.parametrize("partial_channels", [1, 2])
def test_forward_backward(partial_channels):
    net = _supernet(partial_channels=partial_channels)
    y = net(torch.randn(2, 7, 128))
    assert y.shape == (2, 5)
    y.sum().backward()
    assert net.alphas_normal.grad is not None
    assert float(net.alphas_normal.grad.abs().sum()) > 0
    assert float(net.alphas_reduce.grad.abs().sum()) > 0


def test_mixed_op_one_hot_equals_op():
    torch.manual_seed(0)
    mixed = MixedOp(8, 2, OPS).eval()
    x = torch.randn(2, 8, 11)
    for k in range(len(OPS)):
        weights = torch.nn.functional.one_hot(torch.tensor(k), len(OPS)).float()
        assert torch.allclose(mixed(x, weights), mixed.ops[k](x), atol=1e-6)


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_channel_mixed_op_shape(stride):
    mixed = MixedOp(16, stride, OPS, partial_channels=4)
    y = mixed(torch.randn(2, 16, 11), torch.full((len(OPS),), 1.0 / len(OPS)))
    assert y.shape == (2, 16, 6 if stride == 2 else 11)
    assert mixed.ops[0].op[1].in_channels == 4


def test_channel_shuffle_interleaves():
    x = torch.arange(6.0).reshape(1, 6, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_genotype_follows_alphas():
    net = _supernet()
    with torch.no_grad():
        net.alphas_normal.zero_()
        net.alphas_reduce.zero_()
        for row, (node, j) in enumerate(edge_sources(2)):
            if j in (0, 1):
                net.alphas_normal[row, OPS.index("lstm")] = 5.0
            net.alphas_reduce[row, OPS.index("attention")] = 1.0 + j
    genotype = net.genotype()
    assert genotype.normal == (("lstm", 0), ("lstm", 1), ("lstm", 0), ("lstm", 1))
    assert genotype.reduce == (("attention", 0), ("attention", 1), ("attention", 1), ("attention", 2))


def test_edge_normalization_weights_edges():
    net = _supernet(edge_normalization=True)
    assert len(net.arch_parameters()) == 4
    with torch.no_grad():
        net.betas_normal.copy_(torch.tensor([0.0, 0.0, 5.0, -5.0, 5.0]))
    edges_normal, _ = net.edge_weights()
    assert torch.allclose(edges_normal[:2], torch.tensor([0.5, 0.5]))
    assert float(edges_normal[2:].detach().sum()) == pytest.approx(1.0)
    assert [j for _, j in net.genotype().normal[2:]] == [0, 2]
    net(torch.randn(2, 7, 128)).sum().backward()
    assert float(net.betas_normal.grad.abs().sum()) > 0


def test_new_copies_arch_parameters():
    net = _supernet()
    with torch.no_grad():
        net.alphas_normal.add_(1.0)
    copy = net.new()
    assert torch.equal(copy.alphas_normal, net.alphas_normal)
    assert copy.alphas_normal is not net.alphas_normal
    assert copy.genotype() == net.genotype()


@pytest.mark.slow
def test_checkpointing_keeps_gradients():
    # Slow only on first use: torch.utils.checkpoint imports its dependencies (about 8 s).
    config = network_config("small", **{**TINY, "init_channels": 4, "n_times": 64})
    net = Supernet(config)
    checkpointed = Supernet(config, checkpoint_cells=True)
    checkpointed.load_state_dict(net.state_dict())
    x = torch.randn(2, 7, 64)
    net(x).sum().backward()
    checkpointed(x).sum().backward()
    assert torch.allclose(net.alphas_normal.grad, checkpointed.alphas_normal.grad, atol=1e-5)
    assert torch.allclose(net.stem[0].weight.grad, checkpointed.stem[0].weight.grad, atol=1e-5)


@pytest.mark.parametrize("partial_channels, message", [
    (0, "invalid partial_channels 0"),
    (3, "it must divide init_channels 8"),
    (8, "the lstm op needs an even channel count"),
])
def test_invalid_partial_channels(partial_channels, message):
    with pytest.raises(SleepnasError, match=message):
        _supernet(partial_channels=partial_channels)


def test_zero_only_subset_rejected():
    with pytest.raises(SleepnasError, match="only 'zero'"):
        Supernet(network_config("small", **{**TINY, "ops": ("zero",)}))
