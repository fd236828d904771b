"""PNG plots of a search: the arch weights over epochs, and the cells of a genotype.

matplotlib is imported inside each function with the Agg backend, so importing this
module needs no display and no matplotlib.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from sleepnas.runtime.utils import atomic_write_bytes

logger = logging.getLogger(__name__)


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install 'sleepnas[plot]'") from err
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: str | os.PathLike) -> Path:
    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue())


def plot_arch_weights(history: Sequence[dict[str, Any]], ops: Sequence[str],
                      path: str | os.PathLike) -> Path:
    """Plot each op's mean softmax weight over the edges, per epoch, for normal and reduction cells.

    Parameters
    ----------
    history : sequence of dict
        Per-epoch records with ``"weights_normal"`` and ``"weights_reduce"``, each a
        list of rows (one per edge) of op weights.
    ops : sequence of str
        The op of each column.
    path : path-like
        PNG file to write.
    """
    import numpy as np

    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    epochs = [record["epoch"] for record in history]
    for ax, key, title in zip(axes, ("weights_normal", "weights_reduce"), ("Normal cell", "Reduction cell")):
        if history:
            mean = np.array([np.mean(np.asarray(record[key]), axis=0) for record in history])
            colors = plt.get_cmap("tab20")
            for k, op in enumerate(ops):
                ax.plot(epochs, mean[:, k], marker="o", markersize=3, label=op, color=colors(k % 20),
                        linestyle="-" if k < 10 else "--")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean op weight over edges (softmax of alphas)")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    try:
        return _save(figure, path)
    finally:
        plt.close(figure)


def _node_positions(num_nodes: int) -> dict[int, tuple[float, float]]:
    positions = {0: (0.0, 0.75), 1: (0.0, 0.25)}
    for i in range(num_nodes):
        positions[i + 2] = (1.0 + i, 0.5 + (0.18 if i % 2 else -0.18))
    positions[-1] = (1.0 + num_nodes, 0.5)
    return positions


def _draw_cell(ax: Any, edges: Sequence[tuple[str, int]], num_nodes: int, title: str) -> None:
    positions = _node_positions(num_nodes)
    labels = {0: "c_{k-2}", 1: "c_{k-1}", -1: "c_{k}"}
    for n, (op, j) in enumerate(edges):
        node = n // 2 + 2
        (x0, y0), (x1, y1) = positions[j], positions[node]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops={"arrowstyle": "->", "color": "0.35", "shrinkA": 14, "shrinkB": 14})
        ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.03 * (1 if n % 2 else -1), op, fontsize=7,
                ha="center", va="center", color="tab:blue",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    for i in range(num_nodes):
        (x0, y0), (x1, y1) = positions[i + 2], positions[-1]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops={"arrowstyle": "->", "color": "0.75", "linestyle": "--",
                                "shrinkA": 14, "shrinkB": 14})
    for node, (x, y) in positions.items():
        text = labels.get(node, str(node))
        color = "lightyellow" if node in (0, 1, -1) else "lightblue"
        ax.text(x, y, f"${text}$" if "_" in text else text, ha="center", va="center", fontsize=9,
                bbox={"boxstyle": "round,pad=0.4", "fc": color, "ec": "0.3"})
    ax.set_title(title)
    ax.set_xlim(-0.5, num_nodes + 1.5)
    ax.set_ylim(0.0, 1.0)
    ax.axis("off")


def plot_genotype(genotype: Any, path: str | os.PathLike) -> Path:
    """Draw the normal and the reduction cell of ``genotype`` as graphs of nodes and op edges.

    Nodes 0 and 1 are the outputs of the cells two back and one back. The dashed
    edges concatenate the intermediate nodes into the cell output.
    """
    plt = _pyplot()
    width = 2.2 * (genotype.num_nodes + 2)
    figure, axes = plt.subplots(2, 1, figsize=(width, 6.5))
    _draw_cell(axes[0], genotype.normal, genotype.num_nodes, "Normal cell")
    _draw_cell(axes[1], genotype.reduce, genotype.num_nodes, "Reduction cell")
    try:
        return _save(figure, path)
    finally:
        plt.close(figure)
