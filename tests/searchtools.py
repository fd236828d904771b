"""Helpers of the search tests: an in-memory cohort, tiny search options, a fixed latency table."""

from __future__ import annotations

import types
from typing import Any

import numpy as np

#: Ops of the tiny test network: two with parameters, two parameter-free, and zero.
TINY_OPS = ("conv_1x1", "conv_3x1", "max_pool_3x1", "identity", "zero")

#: Options of a tiny search on the small preset that runs in seconds on a CPU (3.2-s windows).
TINY_OPTIONS: dict[str, Any] = {
    "preset": "small", "init_channels": 4, "num_cells": 3, "num_nodes": 2, "ops": TINY_OPS,
    "batch_size": 8, "num_epochs": 2, "final_train_epochs": 0, "device": "cpu",
    "print_freq": 0, "seed": 0, "n_times": 320,
}


def fake_cohort_loader(n_subjects: int = 4, windows_per_subject: int = 16, seed: int = 0):
    """Return a stand-in for `sleepnas.runtime.store.load_cohort` with seeded synthetic windows.

    Stage k adds a sine of k cycles per 10 s to the first channel, so the stages are
    learnable.
    """
    def load_cohort(data_path: Any, spec: Any, **kwargs: Any) -> types.SimpleNamespace:
        rng = np.random.default_rng(seed)
        subjects = np.repeat([f"SC4{i:02d}" for i in range(n_subjects)], windows_per_subject)
        labels = rng.integers(0, len(spec.stage_names), len(subjects))
        windows = rng.normal(size=(len(subjects), spec.n_chans, spec.n_times)).astype(np.float32)
        t = np.arange(spec.n_times) / spec.sfreq
        windows[:, 0, :] += 3 * np.sin(2 * np.pi * (labels[:, None] + 1) * t[None] / 10)
        return types.SimpleNamespace(windows=windows, labels=labels, subjects=subjects,
                                     subject_ids=sorted(set(subjects.tolist())), spec=spec)

    return load_cohort


def fixed_latency_table(network_config: Any, op_ms: dict[str, float], part_ms: float = 0.1):
    """Return a `LatencyTable` giving every op the fixed latency ``op_ms[op]`` at each shape."""
    from sleepnas.search.cost import LatencyTable, op_key, part_key
    from sleepnas.search.network import edge_signatures, fixed_parts

    latency = {part_key(part, network_config): part_ms for part in fixed_parts(network_config)}
    for s in edge_signatures(network_config):
        for op in network_config.ops:
            if op != "zero":
                latency[op_key(op, s.C, s.L, s.stride)] = op_ms[op]
    return LatencyTable.from_dict({"latency_ms": latency})
