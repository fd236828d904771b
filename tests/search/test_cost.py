"""Tests of the latency table and the cost model, with injected tables (no timing asserts)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from sleepnas.runtime.errors import SleepnasError
from sleepnas.search.cost import CostModel, LatencyTable, network_id, op_key
from sleepnas.search.flops import count_flops
from sleepnas.search.genotype import Genotype, num_edges, random_genotype
from sleepnas.search.latency import build_latency_table, table_keys, table_path
from sleepnas.search.network import Network, network_config

# A tiny network whose shapes are easy to follow by hand: 7 x 3000 input, stem to 12 x 94,
# cell 0 normal (C 4, L 94), cells 1 and 2 reduction (C 8 at L 94 -> 47, C 16 at L 47 -> 24).
TINY = dict(init_channels=4, num_cells=3, num_nodes=1)

TINY_FIXED_MS = {
    "stem:7x3000:I4->12x94": 1.0,
    "preprocess:12x94->4x94": 0.1,  # cell 0, both inputs
    "preprocess:12x94->8x94": 0.2,  # cell 1, input 0
    "preprocess:4x94->8x94": 0.3,  # cell 1, input 1
    "preprocess:4x94->16x47": 0.4,  # cell 2, input 0 (factorized reduction)
    "preprocess:8x47->16x47": 0.5,  # cell 2, input 1
    "head:16x24->5": 0.05,
}
TINY_FIXED_SUM_MS = 1.0 + 2 * 0.1 + 0.2 + 0.3 + 0.4 + 0.5 + 0.05

TINY_GENOTYPE = Genotype(normal=(("conv_3x1", 0), ("lstm", 1)),
                         reduce=(("sep_conv_3x1", 0), ("identity", 1)), num_nodes=1)
TINY_GENOTYPE_MS = {
    "op:conv_3x1:C4:L94:s1": 0.7,
    "op:lstm:C4:L94:s1": 2.0,
    "op:sep_conv_3x1:C8:L94:s2": 0.9,
    "op:identity:C8:L94:s2": 0.25,
    "op:sep_conv_3x1:C16:L47:s2": 0.6,
    "op:identity:C16:L47:s2": 0.15,
}


def tiny_config(**overrides):
    return network_config("small", **{**TINY, **overrides})


def test_table_keys_of_tiny_network():
    keys = table_keys(tiny_config(ops=("conv_3x1", "identity", "zero")))
    assert keys[:len(TINY_FIXED_MS)] == list(TINY_FIXED_MS)
    assert "op:conv_3x1:C4:L94:s1" in keys
    assert "op:identity:C16:L47:s2" in keys
    assert not any(key.startswith("op:zero") for key in keys)
    assert len(keys) == len(set(keys))


def test_part_keys_of_genotype():
    model = CostModel(tiny_config())
    assert model.part_keys(TINY_GENOTYPE) == (
        [*TINY_FIXED_MS][:2] + [*TINY_FIXED_MS][1:] + list(TINY_GENOTYPE_MS))


def test_predicted_latency_hand_sum():
    table = LatencyTable.from_dict({"latency_ms": {**TINY_FIXED_MS, **TINY_GENOTYPE_MS}})
    model = CostModel(tiny_config(), table)
    ops_ms = 0.7 + 2.0 + 0.9 + 0.25 + 0.6 + 0.15
    assert model.genotype_latency_ms(TINY_GENOTYPE) == pytest.approx(TINY_FIXED_SUM_MS + ops_ms)


def test_predicted_latency_removes_overhead():
    entries = {**TINY_FIXED_MS, **TINY_GENOTYPE_MS, "head:16x24->5": 0.01}
    table = LatencyTable.from_dict({"latency_ms": entries, "run_overhead_ms": 0.02})
    model = CostModel(tiny_config(), table)
    ops_ms = 0.7 + 2.0 + 0.9 + 0.25 + 0.6 + 0.15
    # 14 parts: the 13 other than the head lose 0.02 each, and the head (0.01) counts
    # as 0, not -0.01.
    expected = (TINY_FIXED_SUM_MS - 0.05) + ops_ms - 0.02 * 13
    assert model.summed_latency_ms(TINY_GENOTYPE) == pytest.approx(expected)
    assert model.entry_ms("head:16x24->5") == 0.0


def test_correction_fitted_on_calibration():
    entries = {**TINY_FIXED_MS, **TINY_GENOTYPE_MS}
    samples = [["stem:7x3000:I4->12x94"], ["op:lstm:C4:L94:s1"],
               ["op:lstm:C4:L94:s1", "op:conv_3x1:C4:L94:s1"]]
    summed = np.array([1.0, 2.0, 2.7])
    config = tiny_config()
    table = LatencyTable.from_dict({
        "latency_ms": entries,
        "calibrations": [{"network_id": network_id(config), "keys": samples,
                          "measured_ms": (1.5 * summed + 0.4).tolist()}]})
    model = CostModel(config, table)
    assert model.scale == pytest.approx(1.5)
    assert model.offset_ms == pytest.approx(0.4)
    raw = model.summed_latency_ms(TINY_GENOTYPE)
    assert model.genotype_latency_ms(TINY_GENOTYPE) == pytest.approx(1.5 * raw + 0.4)
    assert CostModel(config, table, correction=False).scale == 1.0


def test_correction_ignores_other_networks():
    table = LatencyTable.from_dict({
        "latency_ms": {"stem:7x3000:I4->12x94": 1.0},
        "calibrations": [{"network_id": "another", "keys": [["stem:7x3000:I4->12x94"]] * 3,
                          "measured_ms": [5.0, 6.0, 7.0]}]})
    model = CostModel(tiny_config(), table)
    assert (model.scale, model.offset_ms) == (1.0, 0.0)


def test_missing_entry_names_key():
    table = LatencyTable.from_dict({"latency_ms": TINY_FIXED_MS})
    model = CostModel(tiny_config(), table)
    with pytest.raises(SleepnasError, match="no entry 'op:conv_3x1:C4:L94:s1'.*cost build"):
        model.genotype_latency_ms(TINY_GENOTYPE)


def test_latency_without_table_raises():
    model = CostModel(tiny_config())
    with pytest.raises(SleepnasError, match="no latency table"):
        model.genotype_latency_ms(TINY_GENOTYPE)


def test_genotype_outside_ops_raises():
    model = CostModel(tiny_config(ops=("conv_1x1", "identity")),
                      LatencyTable.from_dict({"latency_ms": {}}))
    with pytest.raises(SleepnasError, match="unknown op 'conv_3x1'"):
        model.part_keys(TINY_GENOTYPE)


UNIFORM_OPS = ("conv_1x1", "conv_3x1", "zero")


def uniform_table(config, conv_1x1_ms=0.3, conv_3x1_ms=0.6):
    """Fixed parts as in TINY_FIXED_MS (0 if absent there), and one latency per conv op."""
    entries = {}
    for key in table_keys(config):
        if key.startswith("op:conv_1x1"):
            entries[key] = conv_1x1_ms
        elif key.startswith("op:conv_3x1"):
            entries[key] = conv_3x1_ms
        else:
            entries[key] = TINY_FIXED_MS.get(key, 0.0)
    return LatencyTable.from_dict({"latency_ms": entries})


def test_expected_latency_uniform_alphas():
    config = tiny_config(ops=UNIFORM_OPS)
    model = CostModel(config, uniform_table(config))
    alphas = torch.zeros(num_edges(1), 3)

    # 3 cells of 2 edges, each the mean of (0.3, 0.6, 0 for zero) = 0.3 ms
    expected = TINY_FIXED_SUM_MS + 3 * 2 * (0.3 + 0.6 + 0.0) / 3
    assert model.expected_latency_ms(alphas, alphas).item() == pytest.approx(expected)


def test_expected_latency_weights_edges_by_keep_chance():
    config = tiny_config(ops=UNIFORM_OPS, num_nodes=2)
    table = uniform_table(config, conv_1x1_ms=0.45, conv_3x1_ms=0.45)
    for key in table.latency_ms:
        if not key.startswith("op:"):
            table.latency_ms[key] = 0.0
    model = CostModel(config, table)
    alphas = torch.zeros(num_edges(2), 3)

    # Node 2 has 2 inputs, node 3 has 3; each node keeps 2 edges, so each node adds
    # 2 * (2/3 * 0.45) ms in every one of the 3 cells.
    assert model.expected_latency_ms(alphas, alphas).item() == pytest.approx(3 * 2 * 2 * 0.3)


def test_expected_latency_one_hot_matches_sum():
    config = tiny_config(ops=UNIFORM_OPS)
    model = CostModel(config, uniform_table(config))
    big = 1e4
    alphas_normal = torch.tensor([[0.0, big, 0.0], [big, 0.0, 0.0]])
    alphas_reduce = torch.tensor([[0.0, 0.0, big], [0.0, big, 0.0]])
    # normal: conv_3x1 + conv_1x1; reduce (2 cells): zero + conv_3x1
    expected = TINY_FIXED_SUM_MS + (0.6 + 0.3) + 2 * (0.0 + 0.6)
    value = model.expected_latency_ms(alphas_normal, alphas_reduce).item()
    assert value == pytest.approx(expected, rel=1e-6)


def test_expected_latency_gradient():
    config = tiny_config(ops=UNIFORM_OPS)
    model = CostModel(config, uniform_table(config))
    alphas_normal = torch.zeros(num_edges(1), 3, requires_grad=True)
    alphas_reduce = torch.zeros(num_edges(1), 3, requires_grad=True)
    model.expected_latency_ms(alphas_normal, alphas_reduce).backward()

    assert torch.isfinite(alphas_normal.grad).all()
    # Raising the expensive conv_3x1 raises the latency; raising zero lowers it.
    assert (alphas_normal.grad[:, 1] > 0).all()
    assert (alphas_normal.grad[:, 2] < 0).all()
    assert (alphas_reduce.grad[:, 1] > 0).all()
    # The softmax gradient of each row sums to zero.
    assert alphas_normal.grad.sum(dim=1).abs().max().item() < 1e-6


def test_expected_latency_applies_correction():
    config = tiny_config(ops=UNIFORM_OPS)
    table = uniform_table(config)
    plain = CostModel(config, table)
    model = CostModel(config, table)
    model.scale, model.offset_ms = 2.0, 0.5
    alphas = torch.zeros(num_edges(1), 3)
    expected = 2.0 * plain.expected_latency_ms(alphas, alphas).item() + 0.5
    assert model.expected_latency_ms(alphas, alphas).item() == pytest.approx(expected)


def test_expected_cost_invalid_alphas_shape():
    config = tiny_config(ops=UNIFORM_OPS)
    model = CostModel(config, uniform_table(config))
    with pytest.raises(SleepnasError, match=r"invalid alphas_reduce of shape \(2, 4\)"):
        model.expected_latency_ms(torch.zeros(2, 3), torch.zeros(2, 4))


def test_genotype_flops_match_network():
    config = tiny_config()
    genotype = random_genotype(config.ops, config.num_nodes, seed=3)
    network = Network(config, genotype).eval()
    assert CostModel(config).genotype_flops(genotype) == count_flops(network, (1, 7, 3000))


def test_expected_flops_uniform_and_gradient():
    config = tiny_config(ops=("conv_1x1", "zero"))
    model = CostModel(config)
    alphas_normal = torch.zeros(num_edges(1), 2, requires_grad=True)
    alphas_reduce = torch.zeros(num_edges(1), 2, requires_grad=True)
    value = model.expected_flops(alphas_normal, alphas_reduce)

    # conv_1x1: C * C * L_out for the convolution, 2 * C * L_out for the batch norm.
    conv = {"cell 0": 4 * 4 * 94 + 2 * 4 * 94, "cell 1": 8 * 8 * 47 + 2 * 8 * 47,
            "cell 2": 16 * 16 * 24 + 2 * 16 * 24}
    # Two edges per cell, each half conv_1x1 and half zero.
    expected = model.fixed_flops() + sum(2 * 0.5 * flops for flops in conv.values())
    assert value.item() == pytest.approx(expected)
    value.backward()
    assert (alphas_normal.grad[:, 0] > 0).all()


def test_table_round_trip(tmp_path):
    table = LatencyTable.from_dict({
        "latency_ms": {"op:a": 0.5, "stem:x": 1.25}, "device": "cpu x", "onnxruntime": "1.2.3",
        "threads": 2, "run_overhead_ms": 0.01, "warmup": 3, "repeats": 9,
        "calibrations": [{"network_id": "n", "keys": [["op:a", "op:a"]], "measured_ms": [1.1]}]})
    path = table.save(tmp_path / "table.json")
    loaded = LatencyTable.load(path)
    assert loaded == table
    assert loaded.to_dict() == table.to_dict()
    assert loaded.calibration("n").keys == (("op:a", "op:a"),)
    assert loaded.key == "cpu-x__ort-1.2.3__t2"


def test_table_from_dict_defaults():
    table = LatencyTable.from_dict({"latency_ms": {"op:a": 1}})
    assert table["op:a"] == 1.0
    assert table.threads == 1
    assert table.clock == "wall"
    assert table.run_overhead_ms == 0.0
    assert table.missing(["op:a", "op:b", "op:b"]) == ["op:b"]


@pytest.mark.parametrize("data, message", [
    ({}, "missing key 'latency_ms'"),
    ({"latency_ms": {"op:a": -1.0}}, "expected a finite number >= 0"),
    ({"latency_ms": {"op:a": "fast"}}, "expected a number of milliseconds"),
    ({"latency_ms": {}, "threads": 0}, "threads 0"),
    ({"latency_ms": {}, "clock": "sundial"}, "clock 'sundial'"),
    ({"latency_ms": {}, "format": 99}, "format 99"),
    ([1, 2], "expected a JSON object"),
])
def test_table_from_dict_invalid(data, message):
    with pytest.raises(SleepnasError, match=f"invalid latency table t.json: .*{message}"):
        LatencyTable.from_dict(data, source="t.json")


def test_table_load_errors(tmp_path):
    with pytest.raises(SleepnasError, match="latency table not found"):
        LatencyTable.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{\"latency_ms\": ")
    with pytest.raises(SleepnasError, match="invalid latency table .*bad.json: not valid JSON"):
        LatencyTable.load(tmp_path / "bad.json")


def test_table_merge():
    first = LatencyTable.from_dict({"latency_ms": {"a": 1.0, "b": 2.0}, "calibrations": [
        {"network_id": "n", "keys": [["a"]], "measured_ms": [1.0]}]})
    second = LatencyTable.from_dict({"latency_ms": {"b": 3.0, "c": 4.0}, "calibrations": [
        {"network_id": "n", "keys": [["b"]], "measured_ms": [5.0]}]})
    merged = first.merge(second)
    assert merged.latency_ms == {"a": 1.0, "b": 3.0, "c": 4.0}
    assert [c.measured_ms for c in merged.calibrations] == [(5.0,)]
    with pytest.raises(SleepnasError, match="different setups"):
        first.merge(LatencyTable.from_dict({"latency_ms": {}, "threads": 4}))


def test_op_key_format():
    assert op_key("lstm", 64, 94, 2) == "op:lstm:C64:L94:s2"


BUILD_OPTIONS = dict(warmup=1, repeats=2, calibration_samples=2, show_progress=False)


@pytest.mark.slow
def test_build_table_caches_and_fills_gaps(tmp_path):
    config = tiny_config(ops=("conv_1x1", "identity"))
    table, path = build_latency_table(config, cache_dir=tmp_path, **BUILD_OPTIONS)
    assert path == table_path(1, tmp_path)
    assert set(table_keys(config)) <= set(table.latency_ms)
    assert table.calibration(network_id(config)) is not None
    assert CostModel(config, table).genotype_latency_ms(
        random_genotype(config.ops, 1, seed=0)) > 0

    # A wider op subset measures only the new ops; the cached entries stay as they were.
    wider = tiny_config(ops=("conv_1x1", "identity", "max_pool_3x1"))
    again, _ = build_latency_table(wider, cache_dir=tmp_path, **BUILD_OPTIONS)
    for key, value in table.latency_ms.items():
        assert again.latency_ms[key] == value
    assert set(table_keys(wider)) <= set(again.latency_ms)
    assert json.loads(path.read_text())["latency_ms"] == again.to_dict()["latency_ms"]


@pytest.mark.slow
def test_corrupt_cache_rebuilt(tmp_path, caplog):
    config = tiny_config(ops=("conv_1x1",))
    path = table_path(1, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{ this is not a table")
    with caplog.at_level(logging.WARNING, logger="sleepnas.search.latency"):
        table, _ = build_latency_table(config, cache_dir=tmp_path, **BUILD_OPTIONS)
    assert "is corrupt" in caplog.text
    assert str(path) in caplog.text
    assert set(table_keys(config)) <= set(table.latency_ms)
    assert LatencyTable.load(path).latency_ms == table.latency_ms


def test_network_id_ignores_op_subset():
    assert network_id(tiny_config(ops=("conv_1x1",))) == network_id(tiny_config())
    assert network_id(tiny_config(dropout=0.5)) == network_id(tiny_config())
    assert network_id(tiny_config(init_channels=6)) != network_id(tiny_config())
