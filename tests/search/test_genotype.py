"""Tests of genotypes: JSON round trip, bad files, derivation from arch parameters, sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sleepnas.runtime.errors import SleepnasError
from sleepnas.search.genotype import (Genotype, derive, edge_sources, num_edges, random_genotype,
                                      reduction_indices)
from sleepnas.search.network import Network, network_config
from sleepnas.search.ops import OP_NAMES

OPS = ("conv_3x1", "lstm", "identity", "zero")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny tensors run faster on one thread, and a loaded machine makes more threads slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _genotype() -> Genotype:
    normal = (("conv_3x1", 0), ("lstm", 1), ("identity", 0), ("conv_3x1", 2))
    reduce = (("lstm", 0), ("lstm", 1), ("conv_3x1", 1), ("identity", 2))
    return Genotype(normal, reduce, num_nodes=2)


def test_json_round_trip_exact(tmp_path):
    genotype = _genotype()
    text = genotype.to_json()
    assert Genotype.from_json(text) == genotype
    assert Genotype.from_json(text).to_json() == text
    path = genotype.save(tmp_path / "genotype.json")
    assert Genotype.load(path) == genotype
    assert path.read_text() == text


def test_concat_defaults_to_all_nodes():
    assert _genotype().concat == (2, 3)
    assert json.loads(_genotype().to_json())["concat"] == [2, 3]


def test_rebuilt_network_is_identical(tmp_path):
    config = network_config("small", init_channels=8, num_cells=3, num_nodes=3, n_times=256)
    genotype = random_genotype(OP_NAMES, 3, seed=4)
    torch.manual_seed(0)
    first = Network(config, genotype).eval()
    rebuilt = Network(config, Genotype.load(genotype.save(tmp_path / "g.json"))).eval()
    rebuilt.load_state_dict(first.state_dict())
    x = torch.randn(2, 7, 256)
    assert [type(m).__name__ for m in first.modules()] == [type(m).__name__ for m in rebuilt.modules()]
    assert torch.equal(first(x), rebuilt(x))


def test_pretty_lists_every_cell_node_edge():
    text = _genotype().pretty(num_cells=3)
    assert "Cell 0 (normal)" in text
    assert "Cell 1 (reduction)" in text
    assert "Cell 2 (reduction)" in text
    assert text.count("Node 3") == 3
    assert text.count("Edge from node") == 12
    assert "    Edge from node 2 -> identity" in text


def test_pretty_without_cells_shows_two_cells():
    text = _genotype().pretty()
    assert text.count("Edge from node") == 8
    assert "Reduction cell" in text


def test_reduction_indices_at_thirds():
    assert reduction_indices(8) == (2, 5)
    assert reduction_indices(5) == (1, 3)
    assert reduction_indices(3) == (1, 2)
    assert reduction_indices(1) == (0,)


def test_edge_sources_order():
    assert edge_sources(2) == [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    assert num_edges(4) == 14


def _alphas(num_nodes: int, ops: tuple[str, ...], picks: dict[tuple[int, int], tuple[str, float]]):
    alphas = np.zeros((num_edges(num_nodes), len(ops)))
    for row, (node, j) in enumerate(edge_sources(num_nodes)):
        if (node, j) in picks:
            op, value = picks[(node, j)]
            alphas[row, ops.index(op)] = value
    return alphas


def test_derive_picks_expected_edges():
    # Node 2 has only two inputs; node 3 keeps edges from 0 and 2 (weights 3 and 2 beat 1).
    normal = _alphas(2, OPS, {(2, 0): ("lstm", 2.0), (2, 1): ("conv_3x1", 1.0),
                              (3, 0): ("identity", 3.0), (3, 1): ("conv_3x1", 1.0),
                              (3, 2): ("lstm", 2.0)})
    # A strong zero op does not make an edge strong: edge (3, 1) has only zero.
    reduce = _alphas(2, OPS, {(2, 0): ("conv_3x1", 1.0), (2, 1): ("identity", 1.0),
                              (3, 0): ("lstm", 0.5), (3, 1): ("zero", 9.0),
                              (3, 2): ("conv_3x1", 0.7)})
    genotype = derive(torch.tensor(normal), torch.tensor(reduce), OPS, 2)
    assert genotype.normal == (("lstm", 0), ("conv_3x1", 1), ("identity", 0), ("lstm", 2))
    assert genotype.reduce == (("conv_3x1", 0), ("identity", 1), ("lstm", 0), ("conv_3x1", 2))


def test_derive_with_edge_weights():
    alphas = _alphas(2, OPS, {(3, 0): ("lstm", 1.0), (3, 1): ("lstm", 1.0), (3, 2): ("lstm", 1.0)})
    edge_weights = np.array([1.0, 1.0, 0.1, 1.0, 1.0])
    genotype = derive(alphas, alphas, OPS, 2, edge_weights_normal=edge_weights)
    assert [j for _, j in genotype.normal[2:]] == [1, 2]
    assert [j for _, j in genotype.reduce[2:]] == [0, 1]


def test_derive_rejects_wrong_shape():
    with pytest.raises(SleepnasError, match=r"invalid alphas_normal of shape \(4, 4\): expected \(5, 4\)"):
        derive(np.zeros((4, 4)), np.zeros((5, 4)), OPS, 2)


def test_random_genotype_seeded():
    first = random_genotype(OP_NAMES, 4, seed=3)
    assert first == random_genotype(OP_NAMES, 4, seed=3)
    assert first != random_genotype(OP_NAMES, 4, seed=4)
    assert len(first.normal) == 8
    for edges in (first.normal, first.reduce):
        assert all(op != "zero" for op, _ in edges)
        for i in range(4):
            (_, a), (_, b) = edges[2 * i: 2 * i + 2]
            assert a != b
            assert max(a, b) < i + 2


def test_random_genotype_only_zero():
    with pytest.raises(SleepnasError, match="only 'zero'"):
        random_genotype(["zero"], 2, seed=0)


def _write(tmp_path, data) -> str:
    path = tmp_path / "bad.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_load_not_json(tmp_path):
    path = _write(tmp_path, "{normal: ")
    with pytest.raises(SleepnasError, match=f"{path}: not valid JSON"):
        Genotype.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(SleepnasError, match="genotype file not found"):
        Genotype.load(tmp_path / "none.json")


def test_load_missing_key(tmp_path):
    path = _write(tmp_path, {"normal": [], "num_nodes": 1})
    with pytest.raises(SleepnasError, match="missing key\\(s\\) reduce"):
        Genotype.load(path)


def test_load_edge_to_missing_node(tmp_path):
    data = _genotype().to_dict()
    data["normal"][3] = ["conv_3x1", 3]
    path = _write(tmp_path, data)
    with pytest.raises(SleepnasError, match=f"{path}: the 'normal' cell has an edge from node 3 to node 3"):
        Genotype.load(path)


def test_load_wrong_edge_count(tmp_path):
    data = _genotype().to_dict()
    data["reduce"] = data["reduce"][:3]
    with pytest.raises(SleepnasError, match="the 'reduce' cell has 3 edges but 2 nodes need 4"):
        Genotype.load(_write(tmp_path, data))


def test_load_unknown_op(tmp_path):
    data = _genotype().to_dict()
    data["normal"][0] = ["conv_9x1", 0]
    with pytest.raises(SleepnasError, match="unknown op 'conv_9x1' in the 'normal' cell: expected one of"):
        Genotype.load(_write(tmp_path, data))


def test_load_malformed_edge(tmp_path):
    data = _genotype().to_dict()
    data["normal"][0] = ["conv_3x1"]
    with pytest.raises(SleepnasError, match="invalid edge 0 of the 'normal' cell"):
        Genotype.load(_write(tmp_path, data))


def test_load_wrong_node_count_for_network(tmp_path):
    path = _genotype().save(tmp_path / "g.json")
    with pytest.raises(SleepnasError, match="has 2 nodes per cell but the network has 4"):
        Genotype.load(path, num_nodes=4)


def test_load_op_outside_subset(tmp_path):
    path = _genotype().save(tmp_path / "g.json")
    with pytest.raises(SleepnasError, match="unknown op 'lstm'"):
        Genotype.load(path, ops=("conv_3x1", "identity"))


def test_network_rejects_genotype_of_other_node_count():
    config = network_config("small")
    with pytest.raises(SleepnasError, match="has 2 nodes per cell but the network has 3"):
        Network(config, _genotype())
