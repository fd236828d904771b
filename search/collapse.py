"""A guard against the collapse of DARTS onto parameter-free ops.

DARTS tends to fill its cells with skip connections and pooling as the search goes on,
because those ops let the supernet's weights train fastest, not because the derived
network is good (Chen et al., "Progressive Differentiable Architecture Search", ICCV 2019;
Liang et al., "DARTS+: Improved Differentiable Architecture Search with Early Stopping",
2019). P-DARTS caps the skip connections of the derived cell, and DARTS+ stops the search
when they take over. `CollapseGuard` does either, counting every parameter-free op
(`sleepnas.search.ops.PARAMETER_FREE_OPS`), and logs each time it acts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from sleepnas.runtime.errors import SleepnasError, check_option
from sleepnas.search.genotype import EDGES_PER_NODE, Genotype, derive, edge_sources
from sleepnas.search.ops import PARAMETER_FREE_OPS, check_ops

logger = logging.getLogger(__name__)

#: Modes of the guard: cap the derived cells, stop the search, or do nothing.
COLLAPSE_MODES = ("cap", "stop", "off")

# A logit this low gives an op a softmax weight of 0 in float64.
_MASKED_LOGIT = -1e9


def parameter_free_count(edges: Sequence[tuple[str, int]]) -> int:
    """Return how many edges of a cell use a parameter-free op."""
    return sum(op in PARAMETER_FREE_OPS for op, _ in edges)


class CollapseGuard:
    """Cap on parameter-free ops per derived cell, or an early stop when they exceed it.

    Parameters
    ----------
    ops : sequence of str
        The ops of the supernet, in the column order of the alphas.
    num_nodes : int
        Intermediate nodes per cell.
    max_parameter_free : int
        The most parameter-free ops a derived cell (normal or reduction) may have.
    mode : str
        ``"cap"``: in each cell over the cap, the weakest parameter-free edges take their
        strongest op with parameters instead, and the edges are chosen again (P-DARTS).
        ``"stop"``: `should_stop` turns true once a cell of the derived genotype is over
        the cap (DARTS+). ``"off"``: plain DARTS derivation.
    """

    def __init__(self, ops: Sequence[str], num_nodes: int, *, max_parameter_free: int = 2,
                 mode: str = "cap") -> None:
        self.ops = check_ops(ops)
        self.num_nodes = int(num_nodes)
        self.mode = check_option("--collapse-guard", mode, COLLAPSE_MODES)
        if max_parameter_free < 0:
            raise SleepnasError(f"invalid --max-parameter-free {max_parameter_free!r}: expected an "
                                "integer >= 0")
        self.max_parameter_free = int(max_parameter_free)
        self.has_parametric_ops = any(op not in PARAMETER_FREE_OPS for op in self.ops)
        if self.mode == "cap" and not self.has_parametric_ops:
            logger.warning("collapse guard off: the op subset %s has no op with parameters",
                           ", ".join(self.ops))

    def over_cap(self, genotype: Genotype) -> dict[str, int]:
        """Return ``{cell: count}`` for the cells with more parameter-free ops than the cap."""
        counts = {"normal": parameter_free_count(genotype.normal),
                  "reduce": parameter_free_count(genotype.reduce)}
        return {cell: n for cell, n in counts.items() if n > self.max_parameter_free}

    def should_stop(self, genotype: Genotype) -> bool:
        """Return whether a ``"stop"`` guard ends the search at this genotype, logging why."""
        if self.mode != "stop":
            return False
        over = self.over_cap(genotype)
        if over:
            cells = ", ".join(f"{cell} cell {n}" for cell, n in over.items())
            logger.warning("collapse guard: parameter-free ops took over (%s, cap %d): "
                           "stopping the search early", cells, self.max_parameter_free)
        return bool(over)

    def derive(self, alphas_normal, alphas_reduce) -> Genotype:
        """Derive the genotype from the alphas, capped in ``"cap"`` mode (logged when it acts)."""
        genotype = derive(alphas_normal, alphas_reduce, self.ops, self.num_nodes)
        if self.mode != "cap" or not self.has_parametric_ops or not self.over_cap(genotype):
            return genotype

        logits = [_to_numpy(alphas_normal), _to_numpy(alphas_reduce)]
        for cell_index in range(2):
            logits[cell_index] = self._cap_cell(logits[cell_index])
        capped = derive(logits[0], logits[1], self.ops, self.num_nodes)
        for cell in ("normal", "reduce"):
            before = getattr(genotype, cell)
            after = getattr(capped, cell)
            if before != after:
                logger.info("collapse guard: %s cell had %d parameter-free ops, capped to %d: %s",
                            cell, parameter_free_count(before), self.max_parameter_free,
                            ", ".join(f"node {2 + n // EDGES_PER_NODE} {old[0]}<-{old[1]} is now "
                                      f"{new[0]}<-{new[1]}"
                                      for n, (old, new) in enumerate(zip(before, after)) if old != new))
        return capped

    def _cap_cell(self, logits: np.ndarray) -> np.ndarray:
        """Mask the weakest parameter-free choices of one cell until it is within the cap."""
        logits = logits.copy()
        sources = edge_sources(self.num_nodes)
        weights = _softmax(logits)
        # Each pass masks one parameter-free choice, and a row with all of them masked picks
        # an op with parameters, so logits.size passes are enough.
        for _ in range(logits.size):
            edges = derive(logits, logits, self.ops, self.num_nodes).normal
            if parameter_free_count(edges) <= self.max_parameter_free:
                break

            # Among the chosen parameter-free edges, mask the op of the weakest one.
            chosen = []
            for n, (op, j) in enumerate(edges):
                if op in PARAMETER_FREE_OPS:
                    row = sources.index((2 + n // EDGES_PER_NODE, j))
                    chosen.append((weights[row, self.ops.index(op)], row, self.ops.index(op)))
            _, row, column = min(chosen)
            logits[row, column] = _MASKED_LOGIT
        return logits


def _to_numpy(alphas) -> np.ndarray:
    if hasattr(alphas, "detach"):
        return alphas.detach().cpu().double().numpy()
    return np.asarray(alphas, dtype=np.float64)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
