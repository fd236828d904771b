"""Tests of the network config, its shapes and the discrete network."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sleepnas.runtime.errors import SleepnasError
from sleepnas.search.genotype import random_genotype
from sleepnas.search.network import (PRESETS, Network, NetworkConfig, build_fixed_part,
                                     edge_signatures, fixed_parts, network_config, stem_length)
from sleepnas.search.ops import OP_NAMES

TINY = dict(init_channels=8, num_cells=4, num_nodes=2, n_times=200)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny tensors run faster on one thread, and a loaded machine makes more threads slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_default_config_values():
    config = network_config()
    assert (config.in_channels, config.n_times, config.n_classes) == (7, 3000, 5)
    assert (config.init_channels, config.num_cells, config.num_nodes) == (64, 8, 4)
    assert config.ops == OP_NAMES


def test_small_preset():
    config = network_config("small")
    assert (config.init_channels, config.num_cells, config.num_nodes) == (16, 5, 3)
    assert set(PRESETS) == {"default", "small"}


def test_overrides_and_none_ignored():
    config = network_config("small", num_cells=6, dropout=None, ops=["lstm", "lstm", "zero"])
    assert config.num_cells == 6
    assert config.dropout == 0.0
    assert config.ops == ("lstm", "zero")


def test_config_dict_round_trip():
    config = network_config("small", ops=("conv_3x1", "identity"))
    assert NetworkConfig.from_dict(config.to_dict()) == config


def test_stem_reduces_32_fold():
    assert stem_length(3000) == 94
    assert stem_length(32) == 1
    assert stem_length(33) == 2


@pytest.mark.parametrize("overrides, message", [
    (dict(num_cells=0), "invalid num_cells 0"),
    (dict(num_nodes=0), "invalid num_nodes 0"),
    (dict(n_times=31), "invalid n_times 31: the stem reduces the length 32-fold"),
    (dict(init_channels=15), "invalid init_channels 15: expected an even number"),
    (dict(n_classes=1), "invalid n_classes 1"),
    (dict(dropout=1.0), "invalid dropout 1.0"),
    (dict(ops=[]), "empty"),
    (dict(ops=["conv_9x1"]), "unknown op 'conv_9x1'"),
    (dict(kernel=3), "invalid network option\\(s\\) kernel"),
])
def test_config_rejects_no_network(overrides, message):
    with pytest.raises(SleepnasError, match=message):
        network_config("small", **overrides)


def test_unknown_preset():
    with pytest.raises(SleepnasError, match="unknown preset 'huge': expected one of default, small"):
        network_config("huge")


@pytest.mark.parametrize("n_times", [200, 237])
def test_network_output_shape(n_times):
    config = network_config("small", **{**TINY, "n_times": n_times})
    net = Network(config, random_genotype(OP_NAMES, 2, seed=1))
    y = net(torch.randn(3, 7, n_times))
    assert y.shape == (3, 5)
    y.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def _op_inputs(net: Network, x: torch.Tensor) -> dict[tuple[int, int], tuple[int, int]]:
    seen = {}
    hooks = []
    for k, cell in enumerate(net.cells):
        for e, op in enumerate(cell.ops):
            def hook(module, inputs, key=(k, e)):
                seen[key] = tuple(inputs[0].shape[1:])
            hooks.append(op.register_forward_pre_hook(hook))
    net(x)
    for h in hooks:
        h.remove()
    return seen


def test_edge_signatures_match_network():
    config = network_config("small", **TINY)
    genotype = random_genotype(OP_NAMES, 2, seed=5)
    net = Network(config, genotype).eval()
    seen = _op_inputs(net, torch.randn(1, 7, config.n_times))
    signatures = {(s.cell_index, s.node, s.from_node): s for s in edge_signatures(config)}
    assert len(signatures) == config.num_cells * 5
    for k, cell in enumerate(net.cells):
        edges = genotype.reduce if cell.reduction else genotype.normal
        for e, (op, j) in enumerate(edges):
            signature = signatures[(k, e // 2 + 2, j)]
            assert seen[(k, e)] == (signature.C, signature.L)
            assert signature.reduction == cell.reduction
            assert signature.stride == (2 if cell.reduction and j < 2 else 1)


def test_edge_signatures_default_network():
    signatures = network_config().edge_signatures()
    assert len(signatures) == 8 * 14
    shapes = sorted({(s.C, s.L, s.stride) for s in signatures})
    assert shapes == [(64, 94, 1), (128, 47, 1), (128, 94, 2), (256, 24, 1), (256, 47, 2)]


def test_fixed_parts_match_network():
    config = network_config("small", **TINY)
    net = Network(config, random_genotype(OP_NAMES, 2, seed=2)).eval()
    parts = {p.name: p for p in fixed_parts(config)}
    assert len(parts) == 2 + 2 * config.num_cells
    seen = {}
    modules = {"stem": net.stem, "head": net.head}
    for k, cell in enumerate(net.cells):
        modules[f"cell{k}.preprocess0"] = cell.preprocess0
        modules[f"cell{k}.preprocess1"] = cell.preprocess1
    for name, module in modules.items():
        module.register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, (tuple(i[0].shape[1:]), tuple(o.shape[1:]))))
    net(torch.randn(1, 7, config.n_times))
    for name, part in parts.items():
        assert seen[name] == (part.input_shape, part.output_shape), name
        alone = build_fixed_part(config, name)
        assert sum(p.numel() for p in alone.parameters()) == sum(p.numel() for p in modules[name].parameters())
        assert tuple(alone(torch.randn(1, *part.input_shape)).shape[1:]) == part.output_shape


def test_build_fixed_part_unknown():
    with pytest.raises(SleepnasError, match="unknown fixed part 'cell9.preprocess0'"):
        build_fixed_part(network_config("small", **TINY), "cell9.preprocess0")


def test_network_exports_to_onnx():
    config = network_config("small", **TINY)
    net = Network(config, random_genotype(OP_NAMES, 2, seed=7)).eval()
    x = torch.randn(2, 7, config.n_times)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), buffer, opset_version=17, dynamo=False,
                          input_names=["windows"], output_names=["logits"],
                          dynamic_axes={"windows": {0: "batch"}, "logits": {0: "batch"}})
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = net(x).numpy()
    np.testing.assert_allclose(session.run(None, {"windows": x.numpy()})[0], expected, rtol=1e-4, atol=1e-5)


def test_drop_path_only_in_training():
    config = network_config("small", **TINY)
    net = Network(config, random_genotype(OP_NAMES, 2, seed=7))
    net.drop_path_prob = 0.5
    x = torch.randn(2, 7, config.n_times)
    net.eval()
    assert torch.equal(net(x), net(x))
