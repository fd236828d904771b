"""Reports of an RL search: the accuracy-latency Pareto front, plots, and the strategy comparison."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sleepnas.runtime.utils import atomic_write_json, atomic_write_text
from sleepnas.search.rl_child import OK

logger = logging.getLogger(__name__)

#: File names of the reports.
PARETO_FILE = "pareto.json"
COMPARISON_JSON = "comparison.json"
COMPARISON_TEXT = "comparison.txt"


def pareto_front(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Find the children no other child beats in both validation accuracy and latency.

    Each trained genotype counts once. The latency is the measured one when every
    trained child has it, else the predicted one (``None`` everywhere leaves no front).

    Returns
    -------
    dict
        ``latency`` (``"measured"``, ``"predicted"`` or None), ``points`` (every child:
        ``key``, ``iteration``, ``child``, ``accuracy``, ``latency_ms``, ``reward``,
        ``on_front``) and ``front`` (the points on the front, by latency).
    """
    unique: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("status") == OK and record["key"] not in unique:
            unique[record["key"]] = record
    trained = list(unique.values())
    source = None
    if trained and all(r.get("measured_latency_ms") is not None for r in trained):
        source = "measured"
    elif trained and all(r.get("predicted_latency_ms") is not None for r in trained):
        source = "predicted"
    points = []
    for r in trained:
        latency = r.get(f"{source}_latency_ms") if source else None
        points.append({"key": r["key"], "iteration": r["iteration"], "child": r["child"],
                       "genotype": r["genotype"], "accuracy": r["metrics"].get("accuracy"),
                       "latency_ms": latency, "flops": r.get("flops"), "reward": r.get("reward"),
                       "on_front": False})
    if source is not None:
        for p in points:
            p["on_front"] = not any(_dominates(q, p) for q in points if q is not p)
    front = sorted((p for p in points if p["on_front"]), key=lambda p: p["latency_ms"])
    return {"latency": source, "points": points, "front": front}


def _dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Return whether ``a`` is at least as fast and as accurate as ``b``, and better in one."""
    if a["accuracy"] is None or b["accuracy"] is None:
        return False
    no_worse = a["latency_ms"] <= b["latency_ms"] and a["accuracy"] >= b["accuracy"]
    better = a["latency_ms"] < b["latency_ms"] or a["accuracy"] > b["accuracy"]
    return no_worse and better


def write_pareto(run_dir: str | os.PathLike, front: dict[str, Any]) -> Path:
    """Write ``pareto.json``."""
    return atomic_write_json(Path(run_dir) / PARETO_FILE, front)


def plot_pareto(front: dict[str, Any], path: str | os.PathLike) -> Path:
    """Plot validation accuracy against latency of every trained child, the front as a line."""
    from sleepnas.search.plots import _pyplot, _save

    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6, 4))
    points = [p for p in front["points"] if p["latency_ms"] is not None and p["accuracy"] is not None]
    ax.scatter([p["latency_ms"] for p in points], [p["accuracy"] for p in points], s=14, color="0.6",
               label="children")
    ax.plot([p["latency_ms"] for p in front["front"]], [p["accuracy"] for p in front["front"]], "o-",
            color="C3", label="Pareto front")
    ax.set_xlabel(f"{front['latency'] or 'no'} latency (ms, batch 1)")
    ax.set_ylabel("validation accuracy")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    try:
        return _save(figure, path)
    finally:
        plt.close(figure)


def plot_rewards(records: Sequence[dict[str, Any]], updates: Sequence[dict[str, Any]],
                 path: str | os.PathLike) -> Path:
    """Plot each child's reward, the mean reward of each update and the baseline."""
    from sleepnas.search.plots import _pyplot, _save

    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6, 4))
    rewarded = [r for r in records if r.get("reward") is not None]
    ax.scatter([r["iteration"] for r in rewarded], [r["reward"] for r in rewarded], s=10, color="0.6",
               label="child")
    with_mean = [u for u in updates if u.get("mean_reward") is not None]
    ax.plot([u["iteration"] for u in with_mean], [u["mean_reward"] for u in with_mean], color="C0",
            label="mean of update")
    with_baseline = [u for u in updates if u.get("baseline") is not None]
    ax.plot([u["iteration"] for u in with_baseline], [u["baseline"] for u in with_baseline], "--",
            color="C1", label="baseline")
    ax.set_xlabel("controller update")
    ax.set_ylabel("reward")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    try:
        return _save(figure, path)
    finally:
        plt.close(figure)


#: Rows of the comparison table: (results.json key, label, format).
_COMPARED = (("accuracy", "Accuracy", "pct"), ("macro_f1", "Macro-F1", "pct"), ("kappa", "Kappa", "num"),
             ("params", "Params", "int"), ("flops", "MFLOPs", "mflops"), ("latency_ms", "Latency (ms)", "num"),
             ("search_seconds", "Search time (s)", "sec"))


def _cell(value: Any, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.1f} %"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "mflops":
        return f"{value / 1e6:.2f}"
    if kind == "sec":
        return f"{value:.1f}"
    return f"{value:.3f}"


def compare_results(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Return the comparison of the winners of several strategies: ``{"rows": [...], "text": str}``.

    ``results`` maps a strategy name to its ``results.json``. Each row contains one
    metric (test accuracy, macro-F1, kappa, params, FLOPs, latency, search time) per strategy.
    """
    names = list(results)
    rows = [{"metric": key, **{name: results[name].get(key) for name in names}} for key, _, _ in _COMPARED]
    label_width = max(len(label) for _, label, _ in _COMPARED)
    widths = [max(12, len(name)) for name in names]
    lines = [" ".join([f"{'':<{label_width}}"] + [f"{n:>{w}}" for n, w in zip(names, widths)])]
    for key, label, kind in _COMPARED:
        cells = [f"{_cell(results[n].get(key), kind):>{w}}" for n, w in zip(names, widths)]
        lines.append(" ".join([f"{label:<{label_width}}"] + cells))
    return {"strategies": names, "rows": rows, "text": "\n".join(lines) + "\n"}


def write_comparison(run_dir: str | os.PathLike, comparison: dict[str, Any]) -> None:
    """Write ``comparison.json`` and ``comparison.txt``."""
    run_dir = Path(run_dir)
    atomic_write_json(run_dir / COMPARISON_JSON, {k: v for k, v in comparison.items() if k != "text"})
    atomic_write_text(run_dir / COMPARISON_TEXT, comparison["text"])
