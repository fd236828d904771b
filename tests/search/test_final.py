"""Final training into a run directory, rebuilding its model, and fold summaries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.spec import WindowSpec
from sleepnas.search import rundir
from sleepnas.search.final import format_results, quick_train, summarize_folds, train_folds, train_run
from sleepnas.search.genotype import random_genotype
from sleepnas.search.models import build_model, create_model
from sleepnas.search.network import network_config
from sleepnas.search.training import TrainConfig, make_data

N_CHANS, N_TIMES = 2, 600
RESULT_KEYS = {"accuracy", "macro_f1", "kappa", "per_stage_f1", "confusion", "best_val_accuracy",
               "final_val_accuracy", "params", "flops", "latency_ms", "search_seconds",
               "train_seconds", "versions", "seed", "stage_names", "n_test_windows", "per_subject"}


def _arrays(n: int = 240, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n)
    t = np.arange(N_TIMES) / 100.0
    freqs = np.array([1.0, 3.0, 6.0, 10.0, 15.0])
    windows = 30 * np.sin(2 * np.pi * freqs[labels][:, None, None] * t + rng.uniform(0, 6, (n, 1, 1)))
    windows = (windows + rng.normal(0, 10, (n, N_CHANS, N_TIMES))).astype(np.float32)
    subjects = np.array([f"s{i % 6}" for i in range(n)])
    spec = WindowSpec(channels=("EEG a", "EEG b"), sfreq=100.0, window_s=N_TIMES / 100.0)
    return windows, labels, subjects, spec


def _data(split=None):
    windows, labels, subjects, spec = _arrays()
    split = split or {"train": ["s0", "s1", "s2", "s3"], "val": ["s4"], "test": ["s5"]}
    return make_data(windows, labels, subjects, spec, split)


def _network():
    return network_config("small", in_channels=N_CHANS, n_times=N_TIMES, init_channels=8,
                          num_cells=3, num_nodes=2)


def _config(**kwargs):
    return TrainConfig(**{"epochs": 2, "device": "cpu", "num_threads": 1, **kwargs})


@pytest.mark.slow
def test_reference_run_writes_every_file(tmp_path):
    data = _data()
    results = train_run("tinysleepnet", _network(), data, _config(optimizer="adam"), tmp_path,
                        search_seconds=1.5, options={"data_path": "synthetic"})
    for name in (rundir.CONFIG, rundir.WINDOW_SPEC, rundir.SPLIT, rundir.ARCHITECTURE,
                 rundir.RESULTS, rundir.WEIGHTS, rundir.CHECKPOINT):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / rundir.GENOTYPE).exists()

    written = json.loads((tmp_path / rundir.RESULTS).read_text())
    assert RESULT_KEYS <= set(written)
    assert written["search_seconds"] == 1.5
    assert written["n_test_windows"] == len(data.test_index)
    assert written["params"] == sum(p.numel() for p in create_model("tinysleepnet", _network()).parameters())
    assert written["latency_ms"] is None or written["latency_ms"] > 0
    config = json.loads((tmp_path / rundir.CONFIG).read_text())
    assert config["model"] == "tinysleepnet"
    assert config["network"]["in_channels"] == N_CHANS

    model, spec, _ = build_model(tmp_path)
    assert spec == data.spec
    assert not model.training
    x = torch.from_numpy(spec.normalize(data.windows[data.test_index]))
    predicted = model(x).argmax(1).numpy()
    accuracy = float(np.mean(predicted == data.labels[data.test_index]))
    assert accuracy == pytest.approx(results["accuracy"])


@pytest.mark.slow
def test_genotype_run_rebuilds_same_outputs(tmp_path):
    data = _data()
    genotype = random_genotype(_network().ops, 2, seed=3)
    train_run(genotype, _network(), data, _config(epochs=1), tmp_path, measure_latency=False)
    assert json.loads((tmp_path / rundir.GENOTYPE).read_text()) == genotype.to_dict()
    assert "Edge from node" in (tmp_path / rundir.ARCHITECTURE).read_text()

    model, spec, config = build_model(tmp_path)
    assert config["model"] == "genotype"
    again, _, _ = build_model(tmp_path)
    x = torch.from_numpy(spec.normalize(data.windows[:4]))
    assert torch.equal(model(x), again(x))


def test_network_data_mismatch():
    with pytest.raises(SleepnasError, match="set --channels and --scheme"):
        train_run("tinysleepnet", network_config("small"), _data(), _config(), "unused")


def test_build_model_errors(tmp_path):
    with pytest.raises(SleepnasError, match="run directory .* not found"):
        build_model(tmp_path / "absent")
    rundir.write_json(tmp_path, rundir.CONFIG, {"folds": 3})
    with pytest.raises(SleepnasError, match="cross-validation run"):
        build_model(tmp_path)


def test_summarize_folds_pools_confusions():
    names = ("W", "N1", "N2", "N3", "REM")
    fold_a = {"accuracy": 0.5, "macro_f1": 0.4, "kappa": 0.3,
              "confusion": np.diag([2, 0, 2, 0, 0]).tolist(),
              "per_subject": {"s1": {"accuracy": 0.5, "macro_f1": 0.4, "kappa": 0.3, "n_windows": 4}}}
    cm = np.zeros((5, 5), dtype=int)
    cm[0, 2] = 4
    fold_b = {"accuracy": 0.7, "macro_f1": 0.6, "kappa": 0.5, "confusion": cm.tolist(),
              "per_subject": {"s2": {"accuracy": 0.7, "macro_f1": 0.6, "kappa": 0.5, "n_windows": 4}}}
    summary = summarize_folds([fold_a, fold_b], names)

    # Pooled: 4 of 8 windows right.
    assert summary["pooled"]["accuracy"] == pytest.approx(0.5)
    assert summary["pooled"]["confusion"][0][2] == 4
    assert summary["pooled"]["n_windows"] == 8
    assert summary["mean_std"]["accuracy"]["mean"] == pytest.approx(0.6)
    assert summary["mean_std"]["accuracy"]["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert summary["per_subject"]["s2"]["fold"] == 2
    assert summary["per_subject_mean_std"]["kappa"]["mean"] == pytest.approx(0.4)


@pytest.mark.slow
def test_train_folds_writes_summary(tmp_path):
    windows, labels, subjects, spec = _arrays()
    splits = [{"train": ["s0", "s1", "s2", "s3"], "val": ["s4"], "test": ["s5"]},
              {"train": ["s2", "s3", "s4", "s5"], "val": ["s0"], "test": ["s1"]}]

    def fold_data(split):
        return make_data(windows, labels, subjects, spec, split)

    results = train_folds("tinysleepnet", _network(), fold_data, splits, _config(epochs=1), tmp_path,
                          measure_latency=False)
    assert results["folds"] == 2
    assert (tmp_path / "fold-1" / rundir.WEIGHTS).is_file()
    assert (tmp_path / "fold-2" / rundir.RESULTS).is_file()
    assert set(results["summary"]["per_subject"]) == {"s5", "s1"}
    assert results["summary"]["pooled"]["n_windows"] == int(np.isin(subjects, ["s5", "s1"]).sum())
    assert results["accuracy"] == results["summary"]["pooled"]["accuracy"]
    text = format_results(results)
    assert "mean +- std over folds" in text
    assert "  s5: accuracy" in text
    assert "(fold 1)" in text

    # A resumed run reads finished folds instead of training them again.
    again = train_folds("tinysleepnet", _network(), fold_data, splits, _config(epochs=1), tmp_path,
                        resume=True, measure_latency=False)
    assert again["fold_results"] == results["fold_results"]


@pytest.mark.slow
def test_quick_train_reports_validation(tmp_path):
    from sleepnas.tools.synth import synthesize_cohort

    synthesize_cohort(tmp_path / "cohort", subjects=3, nights=1, seed=2, hours=1.0)
    spec = WindowSpec(channels=("EEG Fpz-Cz", "EEG Pz-Oz"))
    config = network_config("small", in_channels=2, init_channels=4, num_cells=2)
    genotype = random_genotype(config.ops, 3, seed=1)
    report = quick_train(genotype, config, tmp_path / "cohort", spec, epochs=1, batch_size=64,
                         device="cpu", cache_dir=tmp_path / "cache", val_fraction=0.3)
    assert report["epochs"] == 1
    assert len(report["history"]) == 1
    assert 0.0 <= report["best_val_accuracy"] <= 1.0
    assert report["best_val_accuracy"] == report["final_val_accuracy"]
    assert not list(tmp_path.glob("runs"))


@pytest.mark.slow
def test_resume_before_first_checkpoint(tmp_path):
    data = _data()
    config = _config(epochs=1)
    train_run("tinysleepnet", _network(), data, config, tmp_path, measure_latency=False)
    (tmp_path / rundir.CHECKPOINT).unlink()
    results = train_run("tinysleepnet", _network(), data, config, tmp_path, resume=True,
                        measure_latency=False)
    assert results["epochs_run"] == 1
    assert (tmp_path / rundir.CHECKPOINT).is_file()


def test_resume_rejects_other_network(tmp_path):
    data = _data()
    train_run("tinysleepnet", _network(), data, _config(epochs=1), tmp_path, measure_latency=False)
    other = network_config("small", in_channels=N_CHANS, n_times=N_TIMES, init_channels=4,
                           num_cells=3, num_nodes=2)
    with pytest.raises(SleepnasError, match="differs in network"):
        train_run("tinysleepnet", other, data, _config(epochs=1), tmp_path, resume=True)
