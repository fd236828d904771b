"""Tests of the op registry: shapes, gradients and ONNX export of every op at both strides."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sleepnas.runtime.errors import SleepnasError
from sleepnas.search.ops import (OP_NAMES, OPS, PARAMETER_FREE_OPS, attention_heads, check_ops,
                                 make_op, reduced_length)

CHANNELS = 16


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny tensors run faster on one thread, and a loaded machine makes more threads slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _export_and_run(module: torch.nn.Module, x: torch.Tensor, dynamo: bool = False) -> np.ndarray:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buffer, opset_version=17, dynamo=dynamo,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes=None if dynamo else {"x": {0: "batch"}, "y": {0: "batch"}})
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.numpy()})[0]


def test_registry_has_fourteen_ops():
    assert len(OP_NAMES) == 14
    assert set(OP_NAMES) == set(OPS)
    assert PARAMETER_FREE_OPS < set(OP_NAMES)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("length", [12, 13])
@pytest.mark.parametrize("name", OP_NAMES)
def test_op_forward_shape(name, stride, length):
    torch.manual_seed(0)
    op = make_op(name, CHANNELS, stride)
    y = op(torch.randn(3, CHANNELS, length))
    assert y.shape == (3, CHANNELS, reduced_length(length, stride))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", OP_NAMES)
def test_op_backward(name, stride):
    torch.manual_seed(0)
    op = make_op(name, CHANNELS, stride)
    x = torch.randn(2, CHANNELS, 11, requires_grad=True)
    op(x).square().sum().backward()
    params = [p for p in op.parameters() if p.requires_grad]
    if name == "zero":
        assert float(x.grad.abs().sum()) == 0.0
    else:
        assert float(x.grad.abs().sum()) > 0.0
    for p in params:
        assert p.grad is not None
        assert torch.isfinite(p.grad).all()
    if name not in PARAMETER_FREE_OPS:
        assert params, f"{name} has no weights"


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", OP_NAMES)
def test_op_onnx_matches_torch(name, stride):
    torch.manual_seed(0)
    op = make_op(name, CHANNELS, stride).eval()
    x = torch.randn(2, CHANNELS, 13)
    with torch.no_grad():
        expected = op(x).numpy()
    actual = _export_and_run(op, x)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lstm", "attention", "identity", "zero"])
def test_op_dynamo_onnx_matches_torch(name):
    torch.manual_seed(0)
    op = make_op(name, CHANNELS, 2).eval()
    x = torch.randn(1, CHANNELS, 13)
    with torch.no_grad():
        expected = op(x).numpy()
    np.testing.assert_allclose(_export_and_run(op, x, dynamo=True), expected, rtol=1e-4, atol=1e-5)


def test_stride_two_identity_is_factorized_reduction():
    op = make_op("identity", 8, 2)
    assert isinstance(op.conv_even, torch.nn.Conv1d)
    assert op.conv_even.stride == (2,)
    assert op.conv_even.out_channels + op.conv_odd.out_channels == 8


def test_stride_one_identity_returns_input():
    x = torch.randn(1, 8, 5)
    assert torch.equal(make_op("identity", 8, 1)(x), x)


def test_zero_at_stride_two_halves_length():
    y = make_op("zero", 4, 2)(torch.randn(1, 4, 9))
    assert y.shape == (1, 4, 5)
    assert float(y.abs().sum()) == 0.0


def test_lstm_hidden_size_is_half_channels():
    op = make_op("lstm", 32, 1)
    assert op.lstm.hidden_size == 16
    assert op.lstm.bidirectional


def test_lstm_rejects_odd_channels():
    with pytest.raises(SleepnasError, match="invalid channel count 15 for op 'lstm'"):
        make_op("lstm", 15, 1)


@pytest.mark.parametrize("channels, heads", [(4, 1), (8, 1), (16, 2), (24, 2), (32, 4), (64, 4), (256, 4)])
def test_attention_heads_by_channels(channels, heads):
    assert attention_heads(channels) == heads
    assert make_op("attention", channels, 1).heads == heads


def test_stride_two_pools_before_sequence_ops():
    # An odd last sample is averaged with itself, so a constant input stays constant.
    op = make_op("lstm", 8, 2)
    x = torch.arange(7.0).reshape(1, 1, 7).repeat(1, 8, 1)
    pooled = op.pool(x)
    assert pooled.shape == (1, 8, 4)
    assert pooled[0, 0].tolist() == [0.5, 2.5, 4.5, 6.0]


def test_check_ops_keeps_order_without_repeats():
    assert check_ops(["lstm", "conv_3x1", "lstm"]) == ("lstm", "conv_3x1")
    assert check_ops("zero, identity") == ("zero", "identity")


def test_check_ops_unknown_lists_known():
    with pytest.raises(SleepnasError, match="unknown op 'conv_9x1': expected one of conv_1x1, conv_3x1"):
        check_ops(["conv_9x1"])


def test_check_ops_empty_subset():
    with pytest.raises(SleepnasError, match="empty"):
        check_ops([])
    with pytest.raises(SleepnasError, match="empty"):
        check_ops(" , ")


def test_make_op_rejects_stride_three():
    with pytest.raises(SleepnasError, match="invalid stride 3 for op 'conv_3x1': expected 1 or 2"):
        make_op("conv_3x1", 8, 3)
