"""The candidate operations (ops) of the search space, one registry by name.

Every op maps a tensor of shape ``(batch, C, L)`` to ``(batch, C, L_out)``: it keeps the
channel count, and ``L_out = L`` at stride 1 and ``L_out = ceil(L / 2)`` at stride 2 (the
stride of a reduction cell). All ops agree on that length for odd ``L`` too, so their
outputs can be summed. Convolutions follow DARTS (ReLU, convolution, batch norm).

References
----------
Liu, H., Simonyan, K., & Yang, Y. (2019). DARTS: Differentiable architecture search. ICLR.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from sleepnas.runtime.errors import SleepnasError

logger = logging.getLogger(__name__)

#: The 14 op names, in the order of the arch parameters' columns.
OP_NAMES: tuple[str, ...] = (
    "conv_1x1",
    "conv_3x1",
    "conv_5x1",
    "conv_7x1",
    "dil_conv_3x1",
    "dil_conv_5x1",
    "sep_conv_3x1",
    "sep_conv_5x1",
    "max_pool_3x1",
    "avg_pool_3x1",
    "lstm",
    "attention",
    "identity",
    "zero",
)

#: Ops without weights of their own at stride 1.
PARAMETER_FREE_OPS: frozenset[str] = frozenset({"max_pool_3x1", "avg_pool_3x1", "identity", "zero"})

#: Ops whose output is a pooling of the input; a supernet follows them by a batch norm, as DARTS does.
POOLING_OPS: frozenset[str] = frozenset({"max_pool_3x1", "avg_pool_3x1"})


def reduced_length(length: int, stride: int) -> int:
    """Return the output length of every op: ``length`` at stride 1, ``ceil(length / 2)`` at stride 2."""
    return -(-length // stride)


def attention_heads(channels: int) -> int:
    """Return the number of heads of ``attention`` at ``channels``.

    Start from four heads and halve them while a head would get fewer than 8
    channels or the heads do not divide ``channels``. At 8 channels or fewer there is one head.
    """
    heads = 4
    while heads > 1 and (channels % heads or channels // heads < 8):
        heads //= 2
    return heads


class ReLUConvBN(nn.Module):
    """ReLU, one convolution (``groups=1``) and batch norm: the DARTS ``conv`` op."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int,
                 dilation: int = 1, affine: bool = True) -> None:
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv1d(c_in, c_out, kernel_size, stride=stride, padding=padding,
                      dilation=dilation, bias=False),
            nn.BatchNorm1d(c_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)

    def forward_after_relu(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the op to an input that has already been through ReLU."""
        return self.op[2](self.op[1](x))


class DilConv(nn.Module):
    """ReLU, a depthwise (dilated) convolution, a pointwise convolution and batch norm."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int,
                 dilation: int, affine: bool = True) -> None:
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv1d(c_in, c_in, kernel_size, stride=stride, padding=padding,
                      dilation=dilation, groups=c_in, bias=False),
            nn.Conv1d(c_in, c_out, 1, bias=False),
            nn.BatchNorm1d(c_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)

    def forward_after_relu(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the op to an input that has already been through ReLU."""
        return self.op[3](self.op[2](self.op[1](x)))


class SepConv(nn.Module):
    """Two depthwise-separable blocks, the first one strided, as the DARTS ``sep_conv`` op."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int,
                 affine: bool = True) -> None:
        super().__init__()
        self.op = nn.Sequential(
            DilConv(c_in, c_in, kernel_size, stride, 1, affine),
            DilConv(c_in, c_out, kernel_size, 1, 1, affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)

    def forward_after_relu(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the op to an input that has already been through ReLU."""
        return self.op[1](self.op[0].forward_after_relu(x))


class FactorizedReduce(nn.Module):
    """Halve the length with two strided 1x1 convolutions on inputs offset by one sample.

    The offset input is padded by one zero on the right, so both halves have
    ``ceil(L / 2)`` samples for odd ``L`` too. Their outputs are concatenated.
    """

    def __init__(self, c_in: int, c_out: int, affine: bool = True) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_even = nn.Conv1d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_odd = nn.Conv1d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm1d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_after_relu(self.relu(x))

    def forward_after_relu(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the op to an input that has already been through ReLU."""
        shifted = F.pad(x, (0, 1))[:, :, 1:]
        out = torch.cat([self.conv_even(x), self.conv_odd(shifted)], dim=1)
        return self.bn(out)


class Zero(nn.Module):
    """Output zeros: the absence of an edge. At stride 2 it keeps every second sample."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride].mul(0.0)


class _HalveLength(nn.Module):
    """Average-pool by 2 with ``ceil(L / 2)`` outputs; an odd last sample is kept alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            x = F.pad(x, (0, 1), mode="replicate")
        return F.avg_pool1d(x, kernel_size=2, stride=2)


class BiLSTM(nn.Module):
    """A one-layer bidirectional LSTM with ``C / 2`` hidden units per direction.

    The two directions are concatenated, so the output has ``C`` channels again.
    At stride 2 the input is first average-pooled by 2.
    """

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        if channels % 2:
            raise SleepnasError(f"invalid channel count {channels} for op 'lstm': "
                                "expected an even number (C / 2 hidden units per direction)")
        self.pool = _HalveLength() if stride == 2 else nn.Identity()
        self.lstm = nn.LSTM(channels, channels // 2, num_layers=1, batch_first=True,
                            bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x).transpose(1, 2)
        out, _ = self.lstm(x)
        return out.transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the length, with input and output projections.

    Written with plain matmuls (not ``nn.MultiheadAttention``) so that the ONNX
    graph and the FLOP count see every product. Heads: see `attention_heads`.
    At stride 2 the input is first average-pooled by 2.

    References
    ----------
    Vaswani, A., et al. (2017). Attention is all you need. NeurIPS.
    """

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.heads = attention_heads(channels)
        self.head_dim = channels // self.heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.pool = _HalveLength() if stride == 2 else nn.Identity()
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x).transpose(1, 2)
        batch, length, channels = x.shape

        # (batch, length, 3C) -> three (batch, heads, length, head_dim) tensors
        qkv = self.qkv(x).reshape(batch, length, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)

        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        out = torch.matmul(scores.softmax(dim=-1), v)

        out = out.transpose(1, 2).reshape(batch, length, channels)
        return self.proj(out).transpose(1, 2)


def _pool(kind: str, stride: int) -> nn.Module:
    if kind == "max":
        return nn.MaxPool1d(3, stride=stride, padding=1)
    return nn.AvgPool1d(3, stride=stride, padding=1, count_include_pad=False)


def _identity(channels: int, stride: int, affine: bool) -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(channels, channels, affine)


OpFactory = Callable[..., nn.Module]

#: Op name -> factory ``(C, stride, affine=True) -> nn.Module``.
OPS: dict[str, OpFactory] = {
    "conv_1x1": lambda C, stride, affine=True: ReLUConvBN(C, C, 1, stride, affine=affine),
    "conv_3x1": lambda C, stride, affine=True: ReLUConvBN(C, C, 3, stride, affine=affine),
    "conv_5x1": lambda C, stride, affine=True: ReLUConvBN(C, C, 5, stride, affine=affine),
    "conv_7x1": lambda C, stride, affine=True: ReLUConvBN(C, C, 7, stride, affine=affine),
    "dil_conv_3x1": lambda C, stride, affine=True: DilConv(C, C, 3, stride, 2, affine),
    "dil_conv_5x1": lambda C, stride, affine=True: DilConv(C, C, 5, stride, 2, affine),
    "sep_conv_3x1": lambda C, stride, affine=True: SepConv(C, C, 3, stride, affine),
    "sep_conv_5x1": lambda C, stride, affine=True: SepConv(C, C, 5, stride, affine),
    "max_pool_3x1": lambda C, stride, affine=True: _pool("max", stride),
    "avg_pool_3x1": lambda C, stride, affine=True: _pool("avg", stride),
    "lstm": lambda C, stride, affine=True: BiLSTM(C, stride),
    "attention": lambda C, stride, affine=True: SelfAttention(C, stride),
    "identity": _identity,
    "zero": lambda C, stride, affine=True: Zero(stride),
}


def check_ops(names: Iterable[str] | str) -> tuple[str, ...]:
    """Validate an op subset and return it as a tuple in the order given, without repeats.

    Parameters
    ----------
    names : iterable of str, or str
        Op names; one comma-separated string is accepted too (``"conv_3x1,lstm"``).

    Raises
    ------
    SleepnasError
        For an unknown name (the message lists the known ones) or an empty subset.
    """
    if isinstance(names, str):
        names = [part.strip() for part in names.split(",") if part.strip()]
    chosen: list[str] = []
    for name in names:
        if name not in OPS:
            known = ", ".join(OP_NAMES)
            raise SleepnasError(f"unknown op {name!r}: expected one of {known}")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise SleepnasError(f"invalid op subset: it is empty; choose one or more of {', '.join(OP_NAMES)}")
    return tuple(chosen)


def make_op(name: str, channels: int, stride: int, affine: bool = True) -> nn.Module:
    """Build op ``name`` for ``channels`` channels at ``stride`` (1 or 2).

    Raises
    ------
    SleepnasError
        For an unknown op or a stride other than 1 or 2.
    """
    check_ops([name])
    if stride not in (1, 2):
        raise SleepnasError(f"invalid stride {stride!r} for op {name!r}: expected 1 or 2")
    return OPS[name](channels, stride, affine=affine)
