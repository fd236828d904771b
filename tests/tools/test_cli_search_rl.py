"""Tests of ``sleepnas search --strategy rl|both``: options, bad input and tiny runs."""

from __future__ import annotations

import json
import socket
import sys
import time

import pytest
from click.testing import CliRunner

from sleepnas.tools.cli import cli
from tests.clitools import run_cli
from tests.searchtools import TINY_OPS, fake_cohort_loader

TINY_ARGS = ["--preset", "small", "--init-channels", "4", "--num-cells", "3", "--num-nodes", "2",
             "--ops", ",".join(TINY_OPS), "--batch-size", "8", "--num-epochs", "1",
             "--final-train-epochs", "0", "--device", "cpu", "--input-length", "1000",
             "--print-freq", "0"]

RL_ARGS = ["--num-iterations", "2", "--children-per-update", "2", "--eval-epochs", "1",
           "--child-max-batches", "2"]


@pytest.fixture
def fake_cohort(monkeypatch):
    monkeypatch.setattr("sleepnas.runtime.store.load_cohort", fake_cohort_loader())
    monkeypatch.setenv("SLEEPNAS_PROGRESS", "0")


def _search(tmp_path, *extra: str) -> tuple[int, str, str]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    return run_cli(["search", "--data-path", str(data), *TINY_ARGS, *extra])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_help_lists_rl_options():
    result = CliRunner().invoke(cli, ["search", "--help"])
    assert result.exit_code == 0
    for option in ("--num-iterations", "--children-per-update", "--eval-epochs", "--reward-type",
                   "--reward-latency", "--latency-exponent", "--flops-exponent", "--temperature",
                   "--tanh-constant", "--entropy-coeff", "--baseline-decay", "--proxy-screen",
                   "--workers", "--executor", "--ray-address", "darts|rl|both"):
        assert option in result.output, option
    assert "--num_iterations" not in result.output


def test_unreachable_ray_address_one_line(tmp_path, fake_cohort):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'sleepnas[ray]')")
    address = f"127.0.0.1:{_free_port()}"
    started = time.monotonic()
    code, _, err = _search(tmp_path, "--strategy", "rl", "--executor", "ray", "--ray-address", address,
                           "--save-dir", str(tmp_path / "run"))
    assert code == 1
    assert err.startswith(f"Error: cannot reach the Ray cluster at --ray-address {address}")
    assert len(err.strip().splitlines()) == 1
    assert time.monotonic() - started < 30
    assert not (tmp_path / "run").exists()


def test_ray_missing_one_line(tmp_path, fake_cohort, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    code, _, err = _search(tmp_path, "--strategy", "rl", "--executor", "ray", "--save-dir", str(tmp_path / "run"))
    assert code == 1
    assert "pip install 'sleepnas[ray]'" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_ray_address_without_ray_executor(tmp_path, fake_cohort):
    code, _, err = _search(tmp_path, "--strategy", "rl", "--ray-address", "127.0.0.1:1")
    assert code == 1
    assert "--ray-address needs --executor ray" in err


def test_budget_without_table_one_line(tmp_path, fake_cohort):
    code, _, err = _search(tmp_path, "--strategy", "rl", *RL_ARGS, "--latency-budget-ms", "5",
                           "--save-dir", str(tmp_path / "run"))
    assert code == 1
    assert "needs --latency-table" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_rl_search_runs_and_resumes(tmp_path, fake_cohort):
    run_dir = tmp_path / "run"
    code, out, err = _search(tmp_path, "--strategy", "rl", *RL_ARGS, "--save-dir", str(run_dir))
    assert code == 0, err
    assert f"Run directory:      {run_dir}" in out
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert len(history) == 4
    options = json.loads((run_dir / "config.json").read_text())["options"]
    assert options["strategy"] == "rl"
    assert options["num_iterations"] == 2

    # A finished run resumes to its results without a new child, on any number of workers.
    code, out, err = run_cli(["search", "--resume", str(run_dir), "--workers", "2"])
    assert code == 0, err
    assert len((run_dir / "history.jsonl").read_text().splitlines()) == 4

    code, _, err = run_cli(["search", "--resume", str(run_dir), "--eval-epochs", "3"])
    assert code == 1
    assert "eval_epochs: 1 -> 3" in err


@pytest.mark.slow
def test_both_strategies_compared(tmp_path, fake_cohort):
    root = tmp_path / "both"
    code, out, err = _search(tmp_path, "--strategy", "both", *RL_ARGS, "--save-dir", str(root))
    assert code == 0, err
    for name in ("darts", "rl"):
        assert (root / name / "results.json").is_file(), name
    table = (root / "comparison.txt").read_text()
    assert table.splitlines()[0].split() == ["darts", "rl"]
    for label in ("Accuracy", "Macro-F1", "Kappa", "Params", "MFLOPs", "Latency (ms)", "Search time (s)"):
        assert label in table, label
        assert label in out, label
    comparison = json.loads((root / "comparison.json").read_text())
    params = next(row for row in comparison["rows"] if row["metric"] == "params")
    assert params["darts"] == json.loads((root / "darts" / "results.json").read_text())["params"]
    assert params["rl"] == json.loads((root / "rl" / "results.json").read_text())["params"]
