"""Tests of ``sleepnas evaluate`` on small networks, a fixed latency table and bad files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sleepnas.search.cost import CostModel
from sleepnas.search.flops import count_flops, count_params
from sleepnas.search.genotype import random_genotype
from sleepnas.search.network import Network, network_config
from sleepnas.search.ops import OP_NAMES
from tests.clitools import run_cli

SMALL = ["--preset", "small", "--init-channels", "8", "--num-cells", "3"]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny tensors run faster on one thread, and a loaded machine makes more threads slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def genotype_file(tmp_path):
    return random_genotype(OP_NAMES, 3, seed=11).save(tmp_path / "genotype.json")


def _config():
    return network_config("small", init_channels=8, num_cells=3)


def test_evaluate_json_report(genotype_file):
    code, out, err = run_cli(["evaluate", str(genotype_file), *SMALL, "--no-measure",
                              "--batch-size", "4", "--json"])
    assert code == 0, err
    report = json.loads(out)
    torch.manual_seed(0)
    network = Network(_config(), random_genotype(OP_NAMES, 3, seed=11))
    assert report["params"] == count_params(network)
    assert report["flops"] == count_flops(network, (1, 7, 3000))
    assert report["proxy_input"] == "random"
    assert report["proxy_batch_size"] == 4
    assert set(report["proxies"]) == {"snip", "grasp", "grad_norm", "synflow", "fisher", "jacob_cov"}
    assert all(math.isfinite(v) for v in report["proxies"].values())
    assert report["latency_ms"]["measured"] is None


def test_evaluate_predicts_from_latency_table(genotype_file, tmp_path):
    config = _config()
    genotype = random_genotype(OP_NAMES, 3, seed=11)
    keys = CostModel(config).part_keys(genotype)
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"latency_ms": {key: 0.5 for key in keys}}))
    code, out, err = run_cli(["evaluate", str(genotype_file), *SMALL, "--no-measure", "--no-proxies",
                              "--latency-table", str(table), "--json"])
    assert code == 0, err
    report = json.loads(out)
    assert report["latency_ms"]["predicted"] == pytest.approx(0.5 * len(keys))
    assert report["latency_ms"]["predicted_source"] == str(table)
    assert report["proxies"] == {}


def test_evaluate_measures_latency_text(genotype_file):
    code, out, err = run_cli(["evaluate", str(genotype_file), *SMALL, "--proxies", "snip",
                              "--batch-size", "2"])
    assert code == 0, err
    measured = [line for line in out.splitlines() if line.startswith("Measured latency:")]
    assert len(measured) == 1
    assert float(measured[0].split()[2]) > 0
    assert "snip:" in out
    assert "grasp:" not in out
    assert "seeded random windows" in out
    assert "Edge from node" in out


def test_evaluate_wrong_node_count(genotype_file):
    code, out, err = run_cli(["evaluate", str(genotype_file), "--no-measure", "--no-proxies"])
    assert code == 1
    assert err.strip() == (f"Error: {genotype_file}: the genotype has 3 nodes per cell but the network "
                           "has 4; use --num-nodes 3")


def test_evaluate_corrupt_file(tmp_path):
    path = tmp_path / "genotype.json"
    path.write_text('{"normal": [["conv_3x1", 0]')
    code, out, err = run_cli(["evaluate", str(path), "--no-measure"])
    assert code == 1
    assert err.startswith(f"Error: {path}: not valid JSON")
    assert len(err.strip().splitlines()) == 1


def test_evaluate_missing_file(tmp_path):
    code, _, err = run_cli(["evaluate", str(tmp_path / "none.json")])
    assert code == 1
    assert "genotype file not found" in err


@pytest.mark.slow
def test_evaluate_proxies_on_recordings(genotype_file, tmp_path):
    from sleepnas.tools.synth import synthesize_cohort

    synthesize_cohort(tmp_path / "cohort", subjects=1, nights=1, seed=3, hours=1.0)
    code, out, err = run_cli(["evaluate", str(genotype_file), *SMALL, "--no-measure", "--json",
                              "--batch-size", "4", "--data-path", str(tmp_path / "cohort"),
                              "--cache-dir", str(tmp_path / "cache")])
    assert code == 0, err
    report = json.loads(out)
    assert report["proxy_input"] == "data"
    assert all(math.isfinite(v) for v in report["proxies"].values())


def test_channel_subset_sets_stem_width(tmp_path):
    config = network_config("small", in_channels=2)
    genotype = random_genotype(config.ops, config.num_nodes, seed=3)
    path = tmp_path / "genotype.json"
    genotype.save(path)
    code, out, err = run_cli(["evaluate", str(path), "--preset", "small", "--channels",
                              "EEG Fpz-Cz,EOG horizontal", "--no-measure", "--no-proxies",
                              "--json"])
    assert code == 0, err
    report = json.loads(out)
    assert report["params"] == count_params(Network(config, genotype))
