"""Tests of ``sleepnas search``: options, bad input and a tiny search through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from sleepnas.runtime.errors import SleepnasError
from sleepnas.search import rundir
from sleepnas.tools.cli import cli
from tests.clitools import run_cli
from tests.searchtools import TINY_OPS, fake_cohort_loader

TINY_ARGS = ["--preset", "small", "--init-channels", "4", "--num-cells", "3", "--num-nodes", "2",
             "--ops", ",".join(TINY_OPS), "--batch-size", "8", "--num-epochs", "1",
             "--final-train-epochs", "0", "--device", "cpu", "--input-length", "320",
             "--print-freq", "0"]


@pytest.fixture
def fake_cohort(monkeypatch):
    monkeypatch.setattr("sleepnas.runtime.store.load_cohort", fake_cohort_loader())
    monkeypatch.setenv("SLEEPNAS_PROGRESS", "0")


def _search(tmp_path, *extra: str) -> tuple[int, str, str]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    return run_cli(["search", "--data-path", str(data), *TINY_ARGS, *extra])


def test_help_lists_options_without_underscore_spellings():
    result = CliRunner().invoke(cli, ["search", "--help"])
    assert result.exit_code == 0
    for option in ("--strategy", "--data-path", "--input-channels", "--input-length", "--num-classes",
                   "--batch-size", "--num-cells", "--num-nodes", "--init-channels", "--w-lr",
                   "--alpha-lr", "--unrolled", "--num-epochs", "--final-train-epochs", "--print-freq",
                   "--save-dir", "--channels", "--scheme", "--seed", "--device", "--preset",
                   "--latency-table", "--latency-weight", "--latency-budget-ms", "--flops-weight",
                   "--flops-budget", "--ops", "--partial-channels", "--class-weighted",
                   "--cache-dir", "--resume"):
        assert option in result.output, option
    assert "--data_path" not in result.output
    assert "default: 3000" in result.output


def test_empty_data_path_is_one_line_error(tmp_path):
    code, out, err = _search(tmp_path, "--save-dir", str(tmp_path / "run"))
    assert code == 1
    assert err.startswith("Error: ")
    assert str(tmp_path / "data") in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_too_few_subjects_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr("sleepnas.runtime.store.load_cohort", fake_cohort_loader(n_subjects=2))
    code, _, err = _search(tmp_path, "--save-dir", str(tmp_path / "run"))
    assert code == 1
    assert "too few subjects to split: 2" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option", ["--latency-budget-ms", "--flops-budget"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_nonpositive_budget_rejected(tmp_path, option, value):
    code, _, err = _search(tmp_path, option, value)
    assert code == 1
    assert f"invalid {option} {float(value)!r}: expected a budget > 0" in err
    assert not (tmp_path / "runs").exists()


def test_input_channels_must_match_channels(tmp_path):
    code, _, err = _search(tmp_path, "--channels", "Fpz-Cz,Pz-Oz", "--input-channels", "3")
    assert code == 1
    assert "--input-channels 3 does not match the 2 --channels names" in err


def test_scheme_and_num_classes_conflict(tmp_path):
    code, _, err = _search(tmp_path, "--scheme", "aasm5", "--num-classes", "7")
    assert code == 1
    assert "Error:" in err


def test_unknown_op_lists_known_ops(tmp_path, fake_cohort):
    code, _, err = _search(tmp_path, "--ops", "conv_3x1,conv_9x1", "--save-dir", str(tmp_path / "run"))
    assert code == 1
    assert "conv_9x1" in err
    assert "sep_conv_3x1" in err


def test_resume_of_missing_run_rejected(tmp_path):
    code, _, err = run_cli(["search", "--resume", str(tmp_path / "nothing")])
    assert code == 1
    assert "cannot resume" in err


def test_out_of_memory_says_what_to_lower(tmp_path, fake_cohort, monkeypatch):
    def no_memory(self, context):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("sleepnas.search.darts_search.DartsSearch._run", no_memory)
    code, _, err = _search(tmp_path, "--save-dir", str(tmp_path / "run"))
    assert code == 1
    assert "out of memory" in err
    assert "lower --batch-size" in err
    assert "--partial-channels" in err


def test_cli_runner_raises_sleepnas_error(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    result = CliRunner().invoke(cli, ["search", "--data-path", str(data), "--flops-budget", "0"])
    assert isinstance(result.exception, SleepnasError)


@pytest.mark.slow
def test_search_runs_and_resume_checks_options(tmp_path, fake_cohort):
    run_dir = tmp_path / "run"
    (tmp_path / "data").mkdir()
    code, out, err = run_cli(["search", "--data_path", str(tmp_path / "data"), *TINY_ARGS,
                              "--save_dir", str(run_dir)])
    assert code == 0, err
    assert "Normal cell" in out or "Cell 0" in out
    assert "Params:" in out
    assert "Search time:" in out
    genotype = json.loads((run_dir / "genotype.json").read_text())
    assert genotype["num_nodes"] == 2

    # Another option on resume: rejected with the difference named.
    code, _, err = run_cli(["search", "--resume", str(run_dir), "--num-epochs", "3"])
    assert code == 1
    assert "num_epochs: 1 -> 3" in err

    # Resuming a finished search with its own options trains nothing new and succeeds.
    code, out, err = run_cli(["search", "--resume", str(run_dir)])
    assert code == 0, err
    assert json.loads((run_dir / "genotype.json").read_text()) == genotype

    # A corrupt checkpoint of an unfinished search: one line, and the file is kept.
    (run_dir / "search.json").unlink()
    (run_dir / rundir.CHECKPOINT).write_bytes(b"garbage")
    code, _, err = run_cli(["search", "--resume", str(run_dir)])
    assert code == 1
    assert "corrupt checkpoint" in err
    assert (run_dir / rundir.CHECKPOINT).read_bytes() == b"garbage"


def test_table_of_other_network_leaves_no_run(tmp_path, fake_cohort):
    from sleepnas.search.network import network_config
    from tests.searchtools import fixed_latency_table

    other = network_config("small", init_channels=4, num_cells=3, num_nodes=2, ops=TINY_OPS,
                           n_times=640)
    table = tmp_path / "table.json"
    fixed_latency_table(other, {op: 1.0 for op in TINY_OPS}).save(table)
    code, _, err = _search(tmp_path, "--latency-table", str(table), "--latency-weight", "1",
                           "--save-dir", str(tmp_path / "run"))
    assert code == 1
    assert "has no entry" in err
    assert not (tmp_path / "run").exists()
