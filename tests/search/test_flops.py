"""Tests of FLOP and parameter counts against hand counts.

Hand-count convention (one fused multiply-add = 1 FLOP, eval mode, batch 1):
convolution ``C_out * C_in / groups * k * L_out``; batch norm ``2 * C * L_out``;
linear ``in * out`` per row; LSTM ``4 * H * (I + H)`` per direction and step;
matmul ``n * k * m`` per batch and head; average pooling ``k`` per output element;
ReLU, max pooling, softmax, sums and products 0.
"""

from __future__ import annotations

import pytest
import torch

from sleepnas.search.flops import count_flops, count_params, flop_analysis, op_flops
from sleepnas.search.genotype import Genotype
from sleepnas.search.network import Network, network_config, stem_length
from sleepnas.search.ops import OP_NAMES, make_op, reduced_length

C = 16


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny tensors run faster on one thread, and a loaded machine makes more threads slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _conv(k: int, L_out: int) -> int:
    return C * C * k * L_out + 2 * C * L_out


def _separable(k: int, L_out: int) -> int:
    # Depthwise k taps, pointwise C x C, batch norm.
    return C * k * L_out + C * C * L_out + 2 * C * L_out


def _sequence_pool(L: int, stride: int) -> int:
    return 2 * C * reduced_length(L, 2) if stride == 2 else 0


def hand_count(op: str, L: int, stride: int) -> int:
    """FLOPs of ``op`` at ``C`` channels, length ``L`` and ``stride``, counted by hand."""
    L_out = reduced_length(L, stride)
    H = C // 2
    counts = {
        "conv_1x1": _conv(1, L_out),
        "conv_3x1": _conv(3, L_out),
        "conv_5x1": _conv(5, L_out),
        "conv_7x1": _conv(7, L_out),
        "dil_conv_3x1": _separable(3, L_out),
        "dil_conv_5x1": _separable(5, L_out),
        "sep_conv_3x1": _separable(3, L_out) + _separable(3, L_out),
        "sep_conv_5x1": _separable(5, L_out) + _separable(5, L_out),
        "max_pool_3x1": 0,
        "avg_pool_3x1": 3 * C * L_out,
        "lstm": _sequence_pool(L, stride) + 2 * L_out * 4 * H * (C + H),
        "attention": (_sequence_pool(L, stride) + L_out * C * 3 * C + 2 * L_out * L_out * C
                      + L_out * C * C),
        "identity": 0 if stride == 1 else C * C * L_out + 2 * C * L_out,
        "zero": 0,
    }
    return counts[op]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("op", OP_NAMES)
def test_op_flops_match_hand_count(op, stride):
    assert op_flops(op, C, 13, stride) == hand_count(op, 13, stride)


@pytest.mark.parametrize("op", OP_NAMES)
def test_every_op_traced_without_unsupported(op):
    module = make_op(op, C, 2).eval()
    analysis = flop_analysis(module, (torch.zeros(1, C, 9),))
    analysis.total()
    assert dict(analysis.unsupported_ops()) == {}


def test_lstm_counted_for_long_sequences():
    # 6 * L * C^2 at stride 1: three times C^2 per direction and step.
    assert op_flops("lstm", 32, 94, 1) == 6 * 94 * 32 * 32


def test_count_flops_batch_scales():
    module = make_op("conv_3x1", C, 1)
    assert count_flops(module, (4, C, 10)) == 4 * count_flops(module, (1, C, 10))


def test_count_flops_restores_training_mode():
    module = make_op("conv_3x1", C, 1).train()
    count_flops(module, (1, C, 10))
    assert module.training


def test_network_flops_sum_of_parts():
    # One normal cell of two nodes with conv_1x1 edges only; all parts counted by hand.
    config = network_config("small", init_channels=4, num_cells=1, num_nodes=1, n_times=64,
                            stem_multiplier=1)
    genotype = Genotype((("conv_1x1", 0), ("conv_1x1", 1)), (("conv_1x1", 0), ("conv_1x1", 1)), 1)
    net = Network(config, genotype)
    c = 4
    L1, L2, L3 = 16, 4, 2
    assert stem_length(64) == L3
    stem = (7 * c * 7 * L1 + 2 * c * L1) + (c * c * 5 * L2 + 2 * c * L2) + (c * c * 3 * L3 + 2 * c * L3)
    # The only cell is a reduction cell (cells at 1/3 and 2/3 of 1 are cell 0), so it
    # has 8 channels, 1x1 preprocessing and two strided conv_1x1 edges.
    cell_c = 2 * c
    preprocess = 2 * (c * cell_c * L3 + 2 * cell_c * L3)
    L_out = reduced_length(L3, 2)
    edges = 2 * (cell_c * cell_c * L_out + 2 * cell_c * L_out)
    head = cell_c * L_out + cell_c * 5
    assert count_flops(net, (1, 7, 64)) == stem + preprocess + edges + head


def test_count_params_matches_torch():
    module = make_op("lstm", 8, 1)
    expected = 2 * (4 * 4 * (8 + 4) + 2 * 4 * 4)
    assert count_params(module) == expected
