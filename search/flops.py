"""Parameter and FLOP counts of a model, an op or a genotype, with fvcore.

Convention: one fused multiply-add is one FLOP (fvcore's convention), counted in eval
mode for the batch of ``input_shape``. What each op costs:

- convolution: ``C_out * C_in / groups * k * L_out`` (bias not counted);
- linear: ``in_features * out_features`` per row (bias not counted);
- batch norm (eval mode): 2 per element with affine parameters, 1 without (fvcore);
- matmul: the product of the shapes (``b * n * k * m``);
- LSTM: per direction and step, ``4 * H * (I + H)`` for the four gates' two products;
  the gates' elementwise ops are not counted;
- average pooling: one per input element of each window (``k * L_out * C``, and ``C * L``
  for global average pooling, as fvcore counts ``adaptive_avg_pool2d``);
- ReLU, max pooling, softmax, elementwise sums and products, padding: 0.

So ``lstm`` and ``attention`` are counted in full, and no op of the search space is left
out (fvcore's defaults skip ``aten::lstm``).

References
----------
fvcore: https://github.com/facebookresearch/fvcore (FlopCountAnalysis, version 0.1.5).
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sleepnas.search.ops import make_op

logger = logging.getLogger(__name__)

# Ops with no multiply-add: counted as 0 (see the module docstring).
_ZERO_FLOP_OPS: tuple[str, ...] = (
    "aten::add", "aten::add_", "aten::sub", "aten::mul", "aten::mul_", "aten::div", "aten::div_",
    "aten::softmax", "aten::max_pool1d", "aten::max_pool1d_with_indices", "aten::relu",
    "aten::pad", "aten::replication_pad1d", "aten::bernoulli_", "aten::sum", "aten::neg",
    "aten::linalg_vector_norm", "aten::rsub", "aten::sigmoid", "aten::tanh", "aten::exp",
)


def _shape(value: Any) -> list[int] | None:
    type_ = value.type()
    if isinstance(type_, torch._C.TensorType) and type_.sizes() is not None:
        return list(type_.sizes())
    return None


def _lstm_flops(inputs: list[Any], outputs: list[Any]) -> int:
    """Count ``aten::lstm``: per layer, direction and step, ``4 * H * (I + H)`` multiply-adds.

    The traced signature is ``lstm(input, hx, params, has_biases, num_layers, dropout,
    train, bidirectional, batch_first)``.
    """
    input_shape = _shape(inputs[0])
    num_layers = int(inputs[4].toIValue())
    bidirectional = bool(inputs[7].toIValue())
    batch_first = bool(inputs[8].toIValue())
    if batch_first:
        batch, steps, features = input_shape
    else:
        steps, batch, features = input_shape
    output_shape = _shape(outputs[0])
    directions = 2 if bidirectional else 1
    hidden = output_shape[-1] // directions

    flops = 0
    layer_input = features
    for _ in range(num_layers):
        flops += directions * batch * steps * 4 * hidden * (layer_input + hidden)
        layer_input = directions * hidden
    return flops


def _avg_pool_flops(inputs: list[Any], outputs: list[Any]) -> int:
    """Count average pooling as one multiply-add per input element of each window."""
    kernel = inputs[1].toIValue()
    if kernel is None and inputs[1].node().kind() == "prim::ListConstruct":
        kernel = [value.toIValue() for value in inputs[1].node().inputs()]
    kernel_size = int(kernel[0]) if isinstance(kernel, (list, tuple)) else int(kernel)
    output_shape = _shape(outputs[0])
    total = 1
    for size in output_shape:
        total *= size
    return total * kernel_size


def _adaptive_avg_pool_flops(inputs: list[Any], outputs: list[Any]) -> int:
    total = 1
    for size in _shape(inputs[0]):
        total *= size
    return total


def flop_analysis(model: nn.Module, inputs: tuple[torch.Tensor, ...]):
    """Return fvcore's `FlopCountAnalysis` of ``model`` with the handles of this module.

    Its warnings (unsupported ops, uncalled modules, tracer warnings) are off;
    ``analysis.unsupported_ops()`` still lists any op left uncounted.
    """
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, inputs)
    analysis.set_op_handle("aten::lstm", _lstm_flops)
    analysis.set_op_handle("aten::avg_pool1d", _avg_pool_flops)
    analysis.set_op_handle("aten::adaptive_avg_pool1d", _adaptive_avg_pool_flops)
    for name in _ZERO_FLOP_OPS:
        analysis.set_op_handle(name, None)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


def count_flops(model: nn.Module, input_shape: Sequence[int] = (1, 7, 3000)) -> int:
    """Count the FLOPs of one forward pass of ``model`` on a zero input of ``input_shape``.

    The model is traced in eval mode and put back in its previous mode after.
    See the module docstring for what is counted.
    """
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        x = torch.zeros(tuple(input_shape), device=device)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            analysis = flop_analysis(model, (x,))
            total = int(analysis.total())
            unsupported = dict(analysis.unsupported_ops())
    finally:
        model.train(was_training)
    if unsupported:
        # NOTE: ops listed here add time but no FLOPs to the count.
        logger.debug("FLOP count skipped ops: %s", ", ".join(sorted(unsupported)))
    return total


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    """Count the parameters of ``model`` (only those that require grad, by default)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@functools.lru_cache(maxsize=4096)
def op_flops(op: str, C: int, L: int, stride: int) -> int:
    """Count the FLOPs of op ``op`` alone on one input of ``C`` channels and ``L`` samples.

    Ops are built with affine batch norm, as in a `Network`.
    """
    torch.manual_seed(0)
    return count_flops(make_op(op, C, stride), (1, C, L))
