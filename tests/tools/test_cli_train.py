"""``sleepnas train`` end to end on a tiny synthetic cohort, and its option errors."""

from __future__ import annotations

import json

import pytest

from sleepnas.search import rundir
from sleepnas.search.reference import REFERENCE_MODELS
from sleepnas.tools.cli_train import REFERENCE_MODEL_NAMES
from tests.clitools import run_cli


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from sleepnas.tools.synth import synthesize_cohort

    path = tmp_path_factory.mktemp("cohort")
    synthesize_cohort(path, subjects=3, nights=1, seed=1, hours=1.0)
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _train(cohort, cache, save_dir, *extra):
    return run_cli(["-q", "train", "--model", "tinysleepnet", "--data_path", str(cohort),
                    "--save_dir", str(save_dir), "--cache-dir", str(cache), "--epochs", "1",
                    "--batch-size", "64", "--device", "cpu", "--val-fraction", "0.3",
                    "--test-fraction", "0.3", *extra])


def test_reference_names_match_registry():
    assert sorted(REFERENCE_MODEL_NAMES) == sorted(REFERENCE_MODELS)


@pytest.mark.slow
def test_train_reference_model(cohort, cache, tmp_path):
    run = tmp_path / "run"
    code, out, err = _train(cohort, cache, run)
    assert code == 0, err

    for name in (rundir.CONFIG, rundir.WINDOW_SPEC, rundir.SPLIT, rundir.ARCHITECTURE,
                 rundir.RESULTS, rundir.WEIGHTS, rundir.CHECKPOINT, rundir.LOG):
        assert (run / name).is_file(), name
    results = json.loads((run / rundir.RESULTS).read_text())
    assert results["n_test_windows"] > 0
    assert 0.0 <= results["accuracy"] <= 1.0
    assert results["seed"] == 0
    split = json.loads((run / rundir.SPLIT).read_text())
    assert len(split["train"]) == len(split["val"]) == len(split["test"]) == 1

    # The console ends with the architecture and the results.
    assert "Reference model tinysleepnet" in out
    assert "Best val accuracy" in out
    assert "Final val accuracy" in out
    assert "Test macro-F1" in out
    assert f"Params:             {results['params']:,}" in out

    # Resuming a finished run trains nothing more and gives the same test results.
    code, _, err = _train(cohort, cache, run, "--resume")
    assert code == 0, err
    again = json.loads((run / rundir.RESULTS).read_text())
    assert again["confusion"] == results["confusion"]
    assert again["history"] == results["history"]


@pytest.mark.slow
def test_train_folds(cohort, cache, tmp_path):
    run = tmp_path / "cv"
    code, out, err = _train(cohort, cache, run, "--folds", "3")
    assert code == 0, err
    results = json.loads((run / rundir.RESULTS).read_text())
    assert results["folds"] == 3
    assert len(results["fold_results"]) == 3
    assert len(results["summary"]["per_subject"]) == 3
    assert results["summary"]["mean_std"]["accuracy"]["n"] == 3
    assert "mean +- std over folds" in out
    assert (run / "fold-3" / rundir.WEIGHTS).is_file()


@pytest.mark.parametrize(("args", "message"), [
    ([], "give either a GENOTYPE.json file or --model NAME"),
    (["--input-channels", "3"], "--input-channels 3 does not match the 7 --channels names"),
    (["--scheme", "rk7", "--num-classes", "5"], "conflicts with --scheme 'rk7'"),
    (["--channels", " , "], "invalid --channels"),
])
def test_train_option_errors(tmp_path, args, message):
    extra = [] if not args else ["--model", "tinysleepnet"]
    code, _, err = run_cli(["train", "--data-path", str(tmp_path), "--save-dir",
                            str(tmp_path / "run"), *extra, *args])
    assert code == 1
    assert message in err
    assert not (tmp_path / "run").exists()


def test_train_rejects_existing_run(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / rundir.CONFIG).write_text("{}")
    code, _, err = run_cli(["train", "--model", "tinysleepnet", "--data-path", str(tmp_path),
                            "--save-dir", str(tmp_path / "run")])
    assert code == 1
    assert "already contains a run" in err


def test_train_missing_genotype_file(tmp_path):
    code, _, err = run_cli(["train", str(tmp_path / "absent.json"), "--data-path", str(tmp_path)])
    assert code == 1
    assert "genotype file not found" in err


def test_unknown_model_lists_choices(tmp_path):
    code, _, err = run_cli(["train", "--model", "deepsleepnet", "--data-path", str(tmp_path)])
    assert code == 2
    assert "tinysleepnet" in err


@pytest.mark.slow
def test_train_genotype_file(cohort, cache, tmp_path):
    from sleepnas.search.genotype import random_genotype
    from sleepnas.search.network import network_config

    genotype = random_genotype(network_config("small").ops, 3, seed=0)
    genotype.save(tmp_path / "genotype.json")
    run = tmp_path / "run"
    code, out, err = run_cli(["-q", "train", str(tmp_path / "genotype.json"), "--data-path", str(cohort),
                              "--save-dir", str(run), "--cache-dir", str(cache), "--epochs", "1",
                              "--preset", "small", "--init-channels", "4", "--num-cells", "2",
                              "--batch-size", "64", "--device", "cpu"])
    assert code == 0, err
    assert json.loads((run / rundir.GENOTYPE).read_text()) == genotype.to_dict()
    config = json.loads((run / rundir.CONFIG).read_text())
    assert config["model"] == "genotype"
    assert config["network"]["init_channels"] == 4
    assert "Edge from node" in (run / rundir.ARCHITECTURE).read_text()
    assert "Edge from node" in out
    assert "FLOPs:" in out


def test_no_recordings_leaves_no_run_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["train", "--model", "tinysleepnet", "--data-path", str(tmp_path / "empty"),
                            "--save-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")])
    assert code == 1
    assert err.startswith("Error:")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_device(tmp_path):
    code, _, err = run_cli(["train", "--model", "tinysleepnet", "--data-path", str(tmp_path),
                            "--save-dir", str(tmp_path / "run"), "--device", "cuda"])
    assert code == 1
    assert "--device cuda: no CUDA device is available" in err
    assert not (tmp_path / "run").exists()
