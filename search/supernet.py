"""The supernet: every edge of every cell is a mixed op over the whole op subset.

Each edge outputs the sum of all its ops, weighted by the softmax of that edge's row of
arch parameters (``alphas_normal`` for normal cells, ``alphas_reduce`` for reduction
cells). With ``partial_channels=K > 1`` only ``C / K`` channels of an edge's input go
through the ops and the rest bypass them, which cuts memory and time about K-fold. With
``edge_normalization`` each node also weighs its incoming edges by a softmax of
per-edge parameters (``betas``).

References
----------
Liu, H., Simonyan, K., & Yang, Y. (2019). DARTS: Differentiable architecture search. ICLR.
Xu, Y., Xie, L., Zhang, X., Chen, X., Qi, G.-J., Tian, Q., & Xiong, H. (2020). PC-DARTS:
Partial channel connections for memory-efficient architecture search. ICLR.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sleepnas.runtime.errors import SleepnasError
from sleepnas.search.genotype import Genotype, derive, edge_sources, num_edges
from sleepnas.search.network import Head, NetworkConfig, cell_layouts, CellLayout, make_preprocess, make_stem
from sleepnas.search.ops import POOLING_OPS, make_op

logger = logging.getLogger(__name__)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups, so the next edge samples other channels (ShuffleNet)."""
    batch, channels, length = x.shape
    x = x.view(batch, groups, channels // groups, length).transpose(1, 2)
    return x.reshape(batch, channels, length)


class MixedOp(nn.Module):
    """The softmax-weighted sum of every op of an edge, on ``C / partial_channels`` channels.

    Ops use batch norm without affine parameters, and pooling ops are followed by
    one, as in DARTS. The ops that start with a ReLU share one ReLU of the input,
    so autograd keeps one copy of it instead of one per op.
    """

    def __init__(self, channels: int, stride: int, ops: tuple[str, ...], partial_channels: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.partial_channels = partial_channels
        width = channels // partial_channels
        self.ops = nn.ModuleList()
        for name in ops:
            op = make_op(name, width, stride, affine=False)
            if name in POOLING_OPS:
                op = nn.Sequential(op, nn.BatchNorm1d(width, affine=False))
            self.ops.append(op)
        self.after_relu = [hasattr(op, "forward_after_relu") for op in self.ops]
        self.bypass_pool = nn.MaxPool1d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.partial_channels == 1:
            return self._mix(x, weights)

        width = x.shape[1] // self.partial_channels
        active, bypass = x[:, :width], x[:, width:]
        out = torch.cat([self._mix(active, weights), self.bypass_pool(bypass)], dim=1)
        return channel_shuffle(out, self.partial_channels)

    def _mix(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        relu_x = F.relu(x) if any(self.after_relu) else None
        out = 0
        for w, op, after_relu in zip(weights, self.ops, self.after_relu):
            out = out + w * (op.forward_after_relu(relu_x) if after_relu else op(x))
        return out


class SupernetCell(nn.Module):
    """A cell whose intermediate nodes sum mixed ops over every earlier node."""

    def __init__(self, layout: CellLayout, num_nodes: int, ops: tuple[str, ...],
                 partial_channels: int) -> None:
        super().__init__()
        self.reduction = layout.reduction
        self.num_nodes = num_nodes
        self.preprocess0 = make_preprocess(layout.c_prev_prev, layout.channels, layout.reduction_prev,
                                           affine=False)
        self.preprocess1 = make_preprocess(layout.c_prev, layout.channels, False, affine=False)
        self.edges = nn.ModuleList(
            MixedOp(layout.channels, 2 if layout.reduction and j < 2 else 1, ops, partial_channels)
            for _, j in edge_sources(num_nodes))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                edge_weights: torch.Tensor | None) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        row = 0
        for _ in range(self.num_nodes):
            node = 0
            for state in states:
                h = self.edges[row](state, weights[row])
                if edge_weights is not None:
                    h = edge_weights[row] * h
                node = node + h
                row += 1
            states.append(node)
        return torch.cat(states[2:], dim=1)


def _node_softmax(betas: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Softmax of per-edge parameters over the incoming edges of each node."""
    parts = []
    start = 0
    for i in range(num_nodes):
        parts.append(F.softmax(betas[start: start + i + 2], dim=-1))
        start += i + 2
    return torch.cat(parts)


class Supernet(nn.Module):
    """The one-shot network of a DARTS search over ``config.ops``.

    Parameters
    ----------
    config : NetworkConfig
        Shape of the network; the supernet has the stem, cells and head of `Network`.
    partial_channels : int
        K of PC-DARTS: each mixed op computes on ``1 / K`` of the channels (1 = plain DARTS).
    edge_normalization : bool
        Weigh each node's incoming edges by a softmax of learned ``betas`` (PC-DARTS).
    checkpoint_cells : bool
        In training mode, keep only each cell's inputs for the backward pass and
        recompute the rest (gradient checkpointing): less memory, about one more
        forward pass of time.
    """

    def __init__(self, config: NetworkConfig, partial_channels: int = 1,
                 edge_normalization: bool = False, checkpoint_cells: bool = False) -> None:
        super().__init__()
        _check_partial_channels(config, partial_channels)
        self.config = config
        self.partial_channels = partial_channels
        self.edge_normalization = edge_normalization
        self.checkpoint_cells = checkpoint_cells
        self.stem = make_stem(config)
        layouts = cell_layouts(config)
        self.cells = nn.ModuleList(
            SupernetCell(layout, config.num_nodes, config.ops, partial_channels) for layout in layouts)
        self.head = Head(config.num_nodes * layouts[-1].channels, config.n_classes, config.dropout)

        # DARTS initialisation: near-uniform op weights.
        shape = (num_edges(config.num_nodes), len(config.ops))
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(shape))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(shape))
        if edge_normalization:
            self.betas_normal = nn.Parameter(1e-3 * torch.randn(shape[0]))
            self.betas_reduce = nn.Parameter(1e-3 * torch.randn(shape[0]))

    def arch_parameters(self) -> list[nn.Parameter]:
        """Return the arch parameters: alphas (and betas with edge normalization)."""
        params = [self.alphas_normal, self.alphas_reduce]
        if self.edge_normalization:
            params += [self.betas_normal, self.betas_reduce]
        return params

    def weights(self) -> list[nn.Parameter]:
        """Return every parameter that is not an arch parameter."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def edge_weights(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Return the per-edge weights of normal and reduction cells, or ``(None, None)``."""
        if not self.edge_normalization:
            return None, None
        num_nodes = self.config.num_nodes
        return _node_softmax(self.betas_normal, num_nodes), _node_softmax(self.betas_reduce, num_nodes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights_normal = F.softmax(self.alphas_normal, dim=-1)
        weights_reduce = F.softmax(self.alphas_reduce, dim=-1)
        edges_normal, edges_reduce = self.edge_weights()
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            weights, edge_weights = ((weights_reduce, edges_reduce) if cell.reduction
                                     else (weights_normal, edges_normal))
            if self.checkpoint_cells and self.training:
                # NOTE: the recomputation updates batch-norm running statistics a second time.
                out = checkpoint(cell, s0, s1, weights, edge_weights, use_reentrant=False)
            else:
                out = cell(s0, s1, weights, edge_weights)
            s0, s1 = s1, out
        return self.head(s1)

    def genotype(self) -> Genotype:
        """Derive the discrete genotype from the current arch parameters (see `derive`)."""
        edges_normal, edges_reduce = self.edge_weights()
        with torch.no_grad():
            return derive(self.alphas_normal, self.alphas_reduce, self.config.ops, self.config.num_nodes,
                          edge_weights_normal=edges_normal, edge_weights_reduce=edges_reduce)

    def new(self) -> Supernet:
        """Return a fresh supernet of the same shape with a copy of the arch parameters.

        The DARTS second-order (unrolled) step builds its virtual model with it.
        """
        copy = Supernet(self.config, self.partial_channels, self.edge_normalization,
                        self.checkpoint_cells)
        copy.to(self.alphas_normal.device)
        with torch.no_grad():
            for mine, theirs in zip(copy.arch_parameters(), self.arch_parameters()):
                mine.copy_(theirs)
        return copy


def _check_partial_channels(config: NetworkConfig, partial_channels: int) -> None:
    if all(op == "zero" for op in config.ops):
        raise SleepnasError("invalid op subset: only 'zero'; a search needs one or more other ops")
    if isinstance(partial_channels, bool) or not isinstance(partial_channels, int) or partial_channels < 1:
        raise SleepnasError(f"invalid partial_channels {partial_channels!r}: expected an integer >= 1")
    width, remainder = divmod(config.init_channels, partial_channels)
    if remainder or width < 1:
        raise SleepnasError(f"invalid partial_channels {partial_channels}: it must divide "
                            f"init_channels {config.init_channels}")
    if "lstm" in config.ops and width % 2:
        raise SleepnasError(f"invalid partial_channels {partial_channels}: the lstm op needs an even "
                            f"channel count, but init_channels {config.init_channels} / {partial_channels} "
                            f"= {width}")
