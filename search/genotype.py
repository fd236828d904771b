"""Genotypes: the discrete architecture of a cell-based network, and how to derive one.

A cell has two input nodes (0: the output of the cell two back, 1: the output of the
previous cell) and ``num_nodes`` intermediate nodes, numbered 2 to ``num_nodes + 1``.
Each intermediate node sums two edges, each an op applied to an earlier node. A genotype
lists those edges for the normal cells and for the reduction cells.

References
----------
Liu, H., Simonyan, K., & Yang, Y. (2019). DARTS: Differentiable architecture search. ICLR.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.utils import atomic_write_text
from sleepnas.search.ops import OP_NAMES, check_ops

logger = logging.getLogger(__name__)

#: Edges kept per intermediate node.
EDGES_PER_NODE = 2

Edge = tuple[str, int]


def reduction_indices(num_cells: int) -> tuple[int, ...]:
    """Return the indices of the reduction cells: at 1/3 and 2/3 of the depth, as DARTS."""
    return tuple(sorted({num_cells // 3, 2 * num_cells // 3}))


def num_edges(num_nodes: int) -> int:
    """Return the edges of a supernet cell: node ``i`` (from 0) has ``i + 2`` inputs."""
    return sum(i + 2 for i in range(num_nodes))


def edge_sources(num_nodes: int) -> list[tuple[int, int]]:
    """Return ``(node, from_node)`` for each supernet edge, in the rows' order of the alphas."""
    return [(i + 2, j) for i in range(num_nodes) for j in range(i + 2)]


@dataclass(frozen=True)
class Genotype:
    """The discrete architecture: two edges ``(op, from_node)`` per intermediate node.

    Attributes
    ----------
    normal, reduce : tuple of (str, int)
        Edges of the normal and of the reduction cells, node by node: entries
        ``2 * i`` and ``2 * i + 1`` feed node ``i + 2``.
    num_nodes : int
        Intermediate nodes per cell.
    concat : tuple of int
        The nodes concatenated into the cell output (all intermediate nodes).
    """

    normal: tuple[Edge, ...]
    reduce: tuple[Edge, ...]
    num_nodes: int
    concat: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "normal", tuple((str(op), int(j)) for op, j in self.normal))
        object.__setattr__(self, "reduce", tuple((str(op), int(j)) for op, j in self.reduce))
        if not self.concat:
            object.__setattr__(self, "concat", tuple(range(2, 2 + int(self.num_nodes))))
        else:
            object.__setattr__(self, "concat", tuple(int(n) for n in self.concat))
        self.check(source="genotype")

    def check(self, *, num_nodes: int | None = None, ops: Sequence[str] | None = None,
              source: str = "genotype") -> None:
        """Raise a `SleepnasError` naming ``source`` unless the genotype is well formed.

        Parameters
        ----------
        num_nodes : int, optional
            The node count of the network the genotype must fit.
        ops : sequence of str, optional
            The ops the network allows (default: all of `OP_NAMES`).
        source : str
            What to name in the message, such as the file path.
        """
        _check_genotype(self.normal, self.reduce, self.num_nodes, self.concat,
                        num_nodes_expected=num_nodes, ops=ops, source=source)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form: lists of ``[op, from_node]`` pairs."""
        return {
            "normal": [[op, j] for op, j in self.normal],
            "reduce": [[op, j] for op, j in self.reduce],
            "num_nodes": self.num_nodes,
            "concat": list(self.concat),
        }

    def to_json(self) -> str:
        """Return the genotype as JSON text; `from_json` restores an equal genotype."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "genotype") -> Genotype:
        """Build a genotype from `to_dict` output; malformed data raises a `SleepnasError`."""
        if not isinstance(data, dict):
            raise SleepnasError(f"{source}: invalid genotype: expected a JSON object with keys "
                                "'normal', 'reduce', 'num_nodes'")
        missing = [key for key in ("normal", "reduce", "num_nodes") if key not in data]
        if missing:
            raise SleepnasError(f"{source}: invalid genotype: missing key(s) {', '.join(missing)}")
        num_nodes = data["num_nodes"]
        if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
            raise SleepnasError(f"{source}: invalid num_nodes {num_nodes!r}: expected an integer >= 1")
        normal = _parse_edges(data["normal"], "normal", source)
        reduce = _parse_edges(data["reduce"], "reduce", source)
        concat = data.get("concat") or ()
        if not isinstance(concat, list) or not all(isinstance(n, int) for n in concat):
            raise SleepnasError(f"{source}: invalid concat {concat!r}: expected a list of node numbers")

        concat = tuple(concat) or tuple(range(2, 2 + num_nodes))
        _check_genotype(normal, reduce, num_nodes, concat, source=source)
        return cls(normal, reduce, num_nodes, concat)

    @classmethod
    def from_json(cls, text: str, source: str = "genotype") -> Genotype:
        """Parse JSON text from `to_json`; invalid text raises a `SleepnasError` naming ``source``."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SleepnasError(f"{source}: not valid JSON ({err.msg} at line {err.lineno}, "
                                f"column {err.colno})") from None
        return cls.from_dict(data, source)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the genotype as JSON to ``path`` atomically."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike, *, num_nodes: int | None = None,
             ops: Sequence[str] | None = None) -> Genotype:
        """Read a genotype file and check that it fits a network of ``num_nodes`` and ``ops``.

        Raises
        ------
        SleepnasError
            If the file is missing, is not valid JSON or does not fit the network;
            the message names the file and the problem.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SleepnasError(f"genotype file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise SleepnasError(f"cannot read genotype file {path}: {err}") from None
        genotype = cls.from_json(text, source=str(path))
        genotype.check(num_nodes=num_nodes, ops=ops, source=str(path))
        return genotype

    def pretty(self, num_cells: int | None = None) -> str:
        """Return the architecture as readable text, one line per cell, node and edge.

        With ``num_cells``, every cell of a network of that depth is listed
        (``Cell k / Node i / Edge from node j -> op``); without it, the normal
        and the reduction cell once each.
        """
        lines = ["Nodes 0 and 1 are the outputs of the cells two back and one back; "
                 f"the cell output concatenates nodes {', '.join(map(str, self.concat))}."]
        if num_cells is None:
            cells = [("Normal cell", self.normal), ("Reduction cell", self.reduce)]
        else:
            reductions = reduction_indices(num_cells)
            cells = [(f"Cell {k} ({'reduction' if k in reductions else 'normal'})",
                      self.reduce if k in reductions else self.normal) for k in range(num_cells)]
        for title, edges in cells:
            lines.append(title)
            for i in range(self.num_nodes):
                lines.append(f"  Node {i + 2}")
                for op, j in edges[EDGES_PER_NODE * i: EDGES_PER_NODE * (i + 1)]:
                    lines.append(f"    Edge from node {j} -> {op}")
        return "\n".join(lines) + "\n"


def _check_genotype(normal: tuple[Edge, ...], reduce: tuple[Edge, ...], num_nodes: Any,
                    concat: tuple[int, ...], *, num_nodes_expected: int | None = None,
                    ops: Sequence[str] | None = None, source: str = "genotype") -> None:
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise SleepnasError(f"{source}: invalid num_nodes {num_nodes!r}: expected an integer >= 1")
    if num_nodes_expected is not None and num_nodes != num_nodes_expected:
        raise SleepnasError(f"{source}: the genotype has {num_nodes} nodes per cell but the "
                            f"network has {num_nodes_expected}; use --num-nodes {num_nodes}")
    allowed = tuple(ops) if ops is not None else OP_NAMES
    for kind, edges in (("normal", normal), ("reduce", reduce)):
        _check_edges(edges, kind, num_nodes, allowed, source)
    if tuple(concat) != tuple(range(2, 2 + num_nodes)):
        raise SleepnasError(f"{source}: invalid concat {list(concat)}: expected "
                            f"{list(range(2, 2 + num_nodes))}")


def _parse_edges(raw: Any, kind: str, source: str) -> tuple[Edge, ...]:
    if not isinstance(raw, list):
        raise SleepnasError(f"{source}: invalid {kind!r} cell: expected a list of [op, from_node] pairs")
    edges = []
    for n, item in enumerate(raw):
        ok = (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)
              and isinstance(item[1], int) and not isinstance(item[1], bool))
        if not ok:
            raise SleepnasError(f"{source}: invalid edge {n} of the {kind!r} cell {item!r}: "
                                "expected [op, from_node], such as [\"conv_3x1\", 0]")
        edges.append((item[0], item[1]))
    return tuple(edges)


def _check_edges(edges: tuple[Edge, ...], kind: str, num_nodes: int,
                 allowed: Sequence[str], source: str) -> None:
    expected = EDGES_PER_NODE * num_nodes
    if len(edges) != expected:
        raise SleepnasError(f"{source}: the {kind!r} cell has {len(edges)} edges but {num_nodes} nodes "
                            f"need {expected} ({EDGES_PER_NODE} per node)")
    for n, (op, j) in enumerate(edges):
        node = n // EDGES_PER_NODE + 2
        if op not in allowed:
            raise SleepnasError(f"{source}: unknown op {op!r} in the {kind!r} cell: expected one of "
                                f"{', '.join(allowed)}")
        if not 0 <= j < node:
            raise SleepnasError(f"{source}: the {kind!r} cell has an edge from node {j} to node {node}, "
                                f"which does not exist: node {node} takes inputs from nodes 0 to {node - 1}")


def _softmax(logits: Any) -> np.ndarray:
    array = logits.detach().cpu().numpy() if hasattr(logits, "detach") else np.asarray(logits)
    array = array.astype(np.float64)
    shifted = np.exp(array - array.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _derive_cell(weights: np.ndarray, ops: Sequence[str], num_nodes: int,
                 edge_weights: np.ndarray | None) -> tuple[Edge, ...]:
    candidates = [k for k, op in enumerate(ops) if op != "zero"]
    sources = edge_sources(num_nodes)
    edges: list[Edge] = []
    for node in range(2, num_nodes + 2):
        rows = [r for r, (i, _) in enumerate(sources) if i == node]
        strength = {}
        for r in rows:
            scale = 1.0 if edge_weights is None else float(edge_weights[r])
            strength[r] = scale * max(weights[r, k] for k in candidates)

        # Strongest edges first; ties go to the earlier input node, so the result is deterministic.
        best = sorted(rows, key=lambda r: (-strength[r], sources[r][1]))[:EDGES_PER_NODE]
        for r in sorted(best, key=lambda r: sources[r][1]):
            k = max(candidates, key=lambda k: weights[r, k])
            edges.append((ops[k], sources[r][1]))
    return tuple(edges)


def derive(alphas_normal: Any, alphas_reduce: Any, ops: Sequence[str], num_nodes: int, *,
           edge_weights_normal: Any | None = None,
           edge_weights_reduce: Any | None = None) -> Genotype:
    """Derive the genotype from arch parameters, as DARTS does.

    Each edge's op weights are the softmax of its row of alphas. For each node the
    two incoming edges whose strongest non-``zero`` op weighs most are kept, each
    with that op.

    Parameters
    ----------
    alphas_normal, alphas_reduce : array-like or torch.Tensor, shape (num_edges, len(ops))
        Arch parameters (logits) of the normal and the reduction cells; rows in the
        order of `edge_sources`.
    ops : sequence of str
        The op of each column.
    num_nodes : int
        Intermediate nodes per cell.
    edge_weights_normal, edge_weights_reduce : array-like, shape (num_edges,), optional
        Per-edge weights (PC-DARTS edge normalization) that scale each edge's strength.

    References
    ----------
    Xu, Y., et al. (2020). PC-DARTS: Partial channel connections for memory-efficient
    architecture search. ICLR. (edge normalization)
    """
    ops = check_ops(ops)
    if all(op == "zero" for op in ops):
        raise SleepnasError("invalid op subset: only 'zero'; a genotype needs one or more other ops")
    cells = []
    for name, alphas, edge_weights in (("alphas_normal", alphas_normal, edge_weights_normal),
                                       ("alphas_reduce", alphas_reduce, edge_weights_reduce)):
        weights = _softmax(alphas)
        expected = (num_edges(num_nodes), len(ops))
        if weights.shape != expected:
            raise SleepnasError(f"invalid {name} of shape {weights.shape}: expected {expected} "
                                f"for {num_nodes} nodes and {len(ops)} ops")
        scale = None
        if edge_weights is not None:
            scale = (edge_weights.detach().cpu().numpy() if hasattr(edge_weights, "detach")
                     else np.asarray(edge_weights, dtype=np.float64))
        cells.append(_derive_cell(weights, ops, num_nodes, scale))
    return Genotype(cells[0], cells[1], num_nodes)


def random_genotype(ops: Sequence[str], num_nodes: int, seed: int) -> Genotype:
    """Sample a genotype: per node two distinct input nodes, each with a random non-``zero`` op."""
    ops = check_ops(ops)
    choices = [op for op in ops if op != "zero"]
    if not choices:
        raise SleepnasError("invalid op subset: only 'zero'; a genotype needs one or more other ops")
    if num_nodes < 1:
        raise SleepnasError(f"invalid num_nodes {num_nodes!r}: expected an integer >= 1")
    rng = random.Random(seed)
    cells = []
    for _ in range(2):
        edges: list[Edge] = []
        for node in range(2, num_nodes + 2):
            for j in sorted(rng.sample(range(node), EDGES_PER_NODE)):
                edges.append((rng.choice(choices), j))
        cells.append(tuple(edges))
    return Genotype(cells[0], cells[1], num_nodes)
