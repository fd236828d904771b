"""The cell-based network of the search space: its configuration, shapes and discrete form.

A network is a stem, a stack of cells and a head. The stem brings a window of
``in_channels x n_times`` down 32-fold in length (3000 samples -> 94 steps) with three
strided convolutions, so that the LSTM and attention ops of the cells see short
sequences. Each cell takes the outputs of the two cells before it. The cells at 1/3 and
2/3 of the depth are reduction cells, which halve the length and double the channels.
The head is global average pooling, dropout and a linear classifier.

References
----------
Liu, H., Simonyan, K., & Yang, Y. (2019). DARTS: Differentiable architecture search. ICLR.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sleepnas.runtime.errors import SleepnasError
from sleepnas.search.genotype import Genotype, edge_sources, reduction_indices
from sleepnas.search.ops import OP_NAMES, FactorizedReduce, ReLUConvBN, check_ops, make_op, reduced_length

logger = logging.getLogger(__name__)

#: Strides of the stem's three convolutions; their product is the stem's length reduction.
STEM_STRIDES: tuple[int, ...] = (4, 4, 2)
STEM_REDUCTION = 4 * 4 * 2


@dataclass(frozen=True)
class NetworkConfig:
    """The shape of a network: input, stem, cells and classes.

    Attributes
    ----------
    in_channels : int
        Input channels of a window (7 Sleep-EDF cassette signals by default).
    n_times : int
        Samples per window (30 s at 100 Hz). Must be >= 32, the stem's reduction.
    n_classes : int
        Stages of the scheme (5 for aasm5, 7 for rk7).
    init_channels : int
        Channels of the first cells; doubled at each reduction cell. Must be even.
    num_cells : int
        Cells in the stack.
    num_nodes : int
        Intermediate nodes per cell.
    ops : tuple of str
        The op subset a search chooses from.
    stem_multiplier : int
        The stem outputs ``stem_multiplier * init_channels`` channels, as in DARTS.
    dropout : float
        Dropout probability before the classifier.
    """

    in_channels: int = 7
    n_times: int = 3000
    n_classes: int = 5
    init_channels: int = 64
    num_cells: int = 8
    num_nodes: int = 4
    ops: tuple[str, ...] = OP_NAMES
    stem_multiplier: int = 3
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", check_ops(self.ops))
        for name in ("in_channels", "n_classes", "init_channels", "num_cells", "num_nodes",
                     "stem_multiplier"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SleepnasError(f"invalid {name} {value!r}: expected an integer >= 1")
        if self.n_classes < 2:
            raise SleepnasError(f"invalid n_classes {self.n_classes}: expected 2 or more")
        if self.init_channels % 2:
            raise SleepnasError(f"invalid init_channels {self.init_channels}: expected an even number, "
                                "because the lstm op splits channels between two directions")
        if isinstance(self.n_times, bool) or not isinstance(self.n_times, int) or self.n_times < STEM_REDUCTION:
            raise SleepnasError(f"invalid n_times {self.n_times!r}: the stem reduces the length "
                                f"{STEM_REDUCTION}-fold, so a window needs {STEM_REDUCTION} samples or more")
        if not 0.0 <= self.dropout < 1.0:
            raise SleepnasError(f"invalid dropout {self.dropout!r}: expected a probability in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form (``ops`` as a list)."""
        data = dataclasses.asdict(self)
        data["ops"] = list(self.ops)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkConfig:
        """Build a config from `to_dict` output; an unknown key raises a `SleepnasError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SleepnasError(f"invalid network config key(s) {', '.join(unknown)}: "
                                f"expected some of {', '.join(sorted(known))}")
        values = dict(data)
        if "ops" in values:
            values["ops"] = tuple(values["ops"])
        return cls(**values)

    def edge_signatures(self) -> list[EdgeSignature]:
        """Return the input shape and stride of every supernet edge; see `edge_signatures`."""
        return edge_signatures(self)


#: Named configurations. ``small`` makes CPU runs practical with a quarter of the channels,
#: which cuts the FLOPs of full convolutions about 16-fold. It keeps two reduction cells
#: (cells 1 and 3 of 5) with normal cells between, and 3 nodes give 9 edges per cell, not 14.
PRESETS: dict[str, NetworkConfig] = {
    "default": NetworkConfig(),
    "small": NetworkConfig(init_channels=16, num_cells=5, num_nodes=3),
}


def network_config(preset: str = "default", **overrides: Any) -> NetworkConfig:
    """Return the config of ``preset`` with ``overrides`` applied (``None`` values are ignored).

    Raises
    ------
    SleepnasError
        For an unknown preset or an override that makes no network.
    """
    if preset not in PRESETS:
        raise SleepnasError(f"unknown preset {preset!r}: expected one of {', '.join(PRESETS)}")
    changes = {key: value for key, value in overrides.items() if value is not None}
    known = {f.name for f in dataclasses.fields(NetworkConfig)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise SleepnasError(f"invalid network option(s) {', '.join(unknown)}: expected some of "
                            f"{', '.join(sorted(known))}")
    if "ops" in changes:
        changes["ops"] = check_ops(changes["ops"])
    return dataclasses.replace(PRESETS[preset], **changes)


@dataclass(frozen=True)
class EdgeSignature:
    """The input shape ``(batch, C, L)`` and stride of one edge's op in a network."""

    cell_index: int
    reduction: bool
    edge_index: int
    C: int
    L: int
    stride: int
    node: int
    from_node: int


@dataclass(frozen=True)
class FixedPart:
    """A part of the network that no genotype changes, with its input and output shapes.

    ``name`` is ``"stem"``, ``"cell{k}.preprocess0"``, ``"cell{k}.preprocess1"`` or
    ``"head"``; shapes are ``(C, L)`` without the batch axis. The head's output is
    ``(n_classes,)``.
    """

    name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


def stem_length(n_times: int) -> int:
    """Return the stem's output length: ``ceil(n_times / 32)`` (94 for 3000)."""
    length = n_times
    for stride in STEM_STRIDES:
        length = reduced_length(length, stride)
    return length


@dataclass(frozen=True)
class CellLayout:
    """Channels and lengths of a cell's two inputs and of its ops, as the network builds them."""

    index: int
    reduction: bool
    reduction_prev: bool
    c_prev_prev: int
    c_prev: int
    channels: int
    length_prev_prev: int
    length_prev: int


def cell_layouts(config: NetworkConfig) -> list[CellLayout]:
    """Return the `CellLayout` of each cell of ``config``."""
    reductions = reduction_indices(config.num_cells)
    channels = config.stem_multiplier * config.init_channels
    c_pp, c_p, c_cur = channels, channels, config.init_channels
    length = stem_length(config.n_times)
    l_pp, l_p = length, length
    layouts = []
    reduction_prev = False
    for k in range(config.num_cells):
        reduction = k in reductions
        if reduction:
            c_cur *= 2
        layouts.append(CellLayout(k, reduction, reduction_prev, c_pp, c_p, c_cur, l_pp, l_p))
        l_out = reduced_length(l_p, 2) if reduction else l_p
        c_pp, c_p = c_p, config.num_nodes * c_cur
        l_pp, l_p = l_p, l_out
        reduction_prev = reduction
    return layouts


def edge_signatures(config: NetworkConfig) -> list[EdgeSignature]:
    """List the input shape and stride of every supernet edge of every cell.

    Edges are in the row order of the arch parameters (see `edge_sources`). In a
    reduction cell, edges from the input nodes 0 and 1 have stride 2 and the others
    see the already halved length at stride 1.
    """
    signatures = []
    for layout in cell_layouts(config):
        reduced = reduced_length(layout.length_prev, 2)
        for e, (node, j) in enumerate(edge_sources(config.num_nodes)):
            stride = 2 if layout.reduction and j < 2 else 1
            length = reduced if layout.reduction and j >= 2 else layout.length_prev
            signatures.append(EdgeSignature(layout.index, layout.reduction, e, layout.channels,
                                            length, stride, node, j))
    return signatures


def fixed_parts(config: NetworkConfig) -> list[FixedPart]:
    """List the parts no genotype changes (stem, cell preprocessing, head) with their shapes."""
    stem_channels = config.stem_multiplier * config.init_channels
    length = stem_length(config.n_times)
    parts = [FixedPart("stem", (config.in_channels, config.n_times), (stem_channels, length))]
    layouts = cell_layouts(config)
    for layout in layouts:
        out = (layout.channels, layout.length_prev)
        parts.append(FixedPart(f"cell{layout.index}.preprocess0",
                               (layout.c_prev_prev, layout.length_prev_prev), out))
        parts.append(FixedPart(f"cell{layout.index}.preprocess1", (layout.c_prev, layout.length_prev), out))
    last = layouts[-1]
    final_length = reduced_length(last.length_prev, 2) if last.reduction else last.length_prev
    parts.append(FixedPart("head", (config.num_nodes * last.channels, final_length), (config.n_classes,)))
    return parts


def build_fixed_part(config: NetworkConfig, name: str) -> nn.Module:
    """Build the fixed part ``name`` of `fixed_parts` alone, as the network builds it."""
    if name == "stem":
        return make_stem(config)
    if name == "head":
        last = cell_layouts(config)[-1]
        return Head(config.num_nodes * last.channels, config.n_classes, config.dropout)
    layouts = {f"cell{layout.index}": layout for layout in cell_layouts(config)}
    cell, _, which = name.partition(".")
    if cell not in layouts or which not in ("preprocess0", "preprocess1"):
        names = ", ".join(part.name for part in fixed_parts(config))
        raise SleepnasError(f"unknown fixed part {name!r}: expected one of {names}")
    layout = layouts[cell]
    if which == "preprocess0":
        return make_preprocess(layout.c_prev_prev, layout.channels, layout.reduction_prev)
    return make_preprocess(layout.c_prev, layout.channels, False)


def make_stem(config: NetworkConfig) -> nn.Module:
    """Build the stem: three strided convolutions, ``n_times`` -> ``ceil(n_times / 32)``."""
    c = config.init_channels
    c_out = config.stem_multiplier * c
    return nn.Sequential(
        nn.Conv1d(config.in_channels, c, 7, stride=STEM_STRIDES[0], padding=3, bias=False),
        nn.BatchNorm1d(c),
        nn.ReLU(inplace=False),
        nn.Conv1d(c, c, 5, stride=STEM_STRIDES[1], padding=2, bias=False),
        nn.BatchNorm1d(c),
        nn.ReLU(inplace=False),
        nn.Conv1d(c, c_out, 3, stride=STEM_STRIDES[2], padding=1, bias=False),
        nn.BatchNorm1d(c_out),
    )


def make_preprocess(c_in: int, c_out: int, reduce: bool, affine: bool = True) -> nn.Module:
    """Build a cell input's preprocessing: a 1x1 ReLU-conv-BN, or a factorized reduction."""
    if reduce:
        return FactorizedReduce(c_in, c_out, affine=affine)
    return ReLUConvBN(c_in, c_out, 1, 1, affine=affine)


class Head(nn.Module):
    """Global average pooling, dropout and a linear classifier."""

    def __init__(self, channels: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(x).flatten(1)))


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples of ``x`` with probability ``drop_prob`` and rescale the rest.

    References
    ----------
    Larsson, G., Maire, M., & Shakhnarovich, G. (2017). FractalNet. ICLR.
    """
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


class Cell(nn.Module):
    """A discrete cell: each intermediate node sums two ops on earlier nodes."""

    def __init__(self, edges: tuple[tuple[str, int], ...], concat: tuple[int, ...],
                 layout: CellLayout) -> None:
        super().__init__()
        self.reduction = layout.reduction
        self.preprocess0 = make_preprocess(layout.c_prev_prev, layout.channels, layout.reduction_prev)
        self.preprocess1 = make_preprocess(layout.c_prev, layout.channels, False)
        self.sources = [j for _, j in edges]
        self.op_names = [op for op, _ in edges]
        self.concat = list(concat)
        self.ops = nn.ModuleList(
            make_op(op, layout.channels, 2 if layout.reduction and j < 2 else 1) for op, j in edges)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(len(self.ops) // 2):
            node = 0
            for e in (2 * i, 2 * i + 1):
                h = self.ops[e](states[self.sources[e]])
                if self.training and self.op_names[e] != "identity":
                    h = drop_path(h, drop_prob)
                node = node + h
            states.append(node)
        return torch.cat([states[n] for n in self.concat], dim=1)


class Network(nn.Module):
    """The discrete, trainable network of a genotype.

    Input ``(batch, in_channels, n_times)``, output logits ``(batch, n_classes)``.
    Set ``drop_path_prob`` during training to drop whole op outputs (not identities)
    as DARTS does; it has no effect in eval mode.

    Raises
    ------
    SleepnasError
        If the genotype does not fit the config (node count, ops outside ``config.ops``).
    """

    def __init__(self, config: NetworkConfig, genotype: Genotype) -> None:
        super().__init__()
        genotype.check(num_nodes=config.num_nodes, ops=config.ops)
        self.config = config
        self.genotype = genotype
        self.drop_path_prob = 0.0
        self.stem = make_stem(config)
        self.cells = nn.ModuleList()
        for layout in cell_layouts(config):
            edges = genotype.reduce if layout.reduction else genotype.normal
            self.cells.append(Cell(edges, genotype.concat, layout))
        last = cell_layouts(config)[-1]
        self.head = Head(config.num_nodes * last.channels, config.n_classes, config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
        return self.head(s1)
