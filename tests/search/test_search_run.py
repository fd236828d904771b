"""Tests of a whole search run: run directory files, checkpoints and resumption."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from sleepnas.runtime.errors import SleepnasError
from sleepnas.search import darts, rundir, strategy
from sleepnas.search.strategy import SearchConfig, make_strategy
from tests.searchtools import TINY_OPTIONS, fake_cohort_loader

RUN_FILES = ("config.json", "split.json", "window_spec.json", "genotype.json", "architecture.txt",
             "search.json", "results.json", "checkpoint.pt", "log.txt", "arch_weights.png",
             "genotype.png")


@pytest.fixture
def fake_cohort(monkeypatch):
    monkeypatch.setattr("sleepnas.runtime.store.load_cohort", fake_cohort_loader())
    monkeypatch.setenv("SLEEPNAS_PROGRESS", "0")


def _config(tmp_path, name: str, **changes) -> SearchConfig:
    options = {**TINY_OPTIONS, **changes}
    return SearchConfig(data_path=str(tmp_path / "data"), save_dir=str(tmp_path / name), **options)


def _history(run_dir) -> list[dict]:
    return json.loads((run_dir / "search.json").read_text())["history"]


@pytest.mark.slow
def test_tiny_search_writes_every_file(tmp_path, fake_cohort, caplog):
    caplog.set_level(logging.INFO, logger="sleepnas")
    config = _config(tmp_path, "run", final_train_epochs=1)
    result = make_strategy(config, measure_latency=False).run()
    run_dir = tmp_path / "run"
    for name in RUN_FILES + ("weights.pt",):
        assert (run_dir / name).is_file(), name

    results = json.loads((run_dir / "results.json").read_text())
    for key in ("accuracy", "macro_f1", "kappa", "per_stage_f1", "confusion", "best_val_accuracy",
                "final_val_accuracy", "params", "search_seconds", "versions", "seed"):
        assert key in results, key
    assert results["search_seconds"] > 0
    assert results["params"] > 0
    saved = json.loads((run_dir / "genotype.json").read_text())
    assert saved == result.genotype.to_dict()
    history = _history(run_dir)
    assert [record["epoch"] for record in history] == [1, 2]
    assert history[-1]["genotype"] == result.genotype.to_dict()
    assert "Cell 0" in (run_dir / "architecture.txt").read_text()
    assert "search epoch 2/2" in (run_dir / "log.txt").read_text()
    assert (run_dir / "arch_weights.png").read_bytes()[:4] == b"\x89PNG"
    split = json.loads((run_dir / "search.json").read_text())["split"]
    assert json.loads((run_dir / "split.json").read_text())["test"] == split["test"]
    assert set(split["weights"]).isdisjoint(split["arch"])
    assert set(split["weights"]) | set(split["arch"]) == set(split["train"])


@pytest.mark.slow
def test_interrupted_search_resumes_to_same_genotype(tmp_path, fake_cohort, monkeypatch):
    make_strategy(_config(tmp_path, "whole"), measure_latency=False).run()
    whole = _history(tmp_path / "whole")

    # Ctrl-C during the first mini-batch of epoch 1: the loop saves after it and raises.
    steps = {"n": 0}
    original_step = darts.Architect.step

    def step_then_interrupt(self, *args, **kwargs):
        steps["n"] += 1
        if steps["n"] == 1:
            strategy_flags[-1].requested = True
        return original_step(self, *args, **kwargs)

    strategy_flags: list = []
    original_enter = strategy.InterruptFlag.__enter__

    def remember_flag(self):
        strategy_flags.append(self)
        return original_enter(self)

    monkeypatch.setattr(darts.Architect, "step", step_then_interrupt)
    monkeypatch.setattr(strategy.InterruptFlag, "__enter__", remember_flag)
    with pytest.raises(KeyboardInterrupt):
        make_strategy(_config(tmp_path, "parts"), measure_latency=False).run()
    saved = rundir.load_checkpoint(tmp_path / "parts")
    assert saved["strategy"]["state"]["epoch"] == 0
    assert saved["strategy"]["state"]["batch"] == 1
    monkeypatch.setattr(darts.Architect, "step", original_step)

    make_strategy(_config(tmp_path, "parts"), resume=True, measure_latency=False).run()
    parts = _history(tmp_path / "parts")
    assert [r["genotype"] for r in parts] == [r["genotype"] for r in whole]
    np.testing.assert_allclose(parts[-1]["weights_normal"], whole[-1]["weights_normal"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(parts[-1]["weights_reduce"], whole[-1]["weights_reduce"], rtol=0, atol=1e-7)
    assert parts[-1]["train_loss"] == pytest.approx(whole[-1]["train_loss"], abs=1e-6)


@pytest.mark.slow
def test_killed_search_resumes_from_epoch_checkpoint(tmp_path, fake_cohort, monkeypatch):
    make_strategy(_config(tmp_path, "whole", unrolled=True), measure_latency=False).run()
    whole = _history(tmp_path / "whole")

    # A kill in epoch 2 saves nothing: the epoch 1 checkpoint is the last good one.
    calls = {"n": 0}
    original_end = strategy.SearchContext.save_checkpoint

    def save_then_die(self, state, **kwargs):
        original_end(self, state, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("killed")

    monkeypatch.setattr(strategy.SearchContext, "save_checkpoint", save_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        make_strategy(_config(tmp_path, "parts", unrolled=True), measure_latency=False).run()
    monkeypatch.setattr(strategy.SearchContext, "save_checkpoint", original_end)

    make_strategy(_config(tmp_path, "parts", unrolled=True), resume=True, measure_latency=False).run()
    parts = _history(tmp_path / "parts")
    assert [r["genotype"] for r in parts] == [r["genotype"] for r in whole]
    np.testing.assert_allclose(parts[-1]["weights_normal"], whole[-1]["weights_normal"], rtol=0, atol=1e-7)


def test_resume_rejects_other_options(tmp_path, fake_cohort):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = _config(tmp_path, "run")
    rundir.write_json(run_dir, "config.json", {"options": config.to_dict()})
    other = _config(tmp_path, "run", num_epochs=5)
    with pytest.raises(SleepnasError, match=r"other search options \(num_epochs: 2 -> 5\)"):
        make_strategy(other, resume=True).run()


def test_resume_rejects_corrupt_checkpoint(tmp_path, fake_cohort):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = _config(tmp_path, "run")
    rundir.write_json(run_dir, "config.json", {"options": config.to_dict()})
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SleepnasError, match="corrupt checkpoint"):
        make_strategy(config, resume=True).run()
    assert (run_dir / "checkpoint.pt").read_bytes() == b"not a checkpoint"


def test_too_few_subjects_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr("sleepnas.runtime.store.load_cohort", fake_cohort_loader(n_subjects=3))
    with pytest.raises(SleepnasError, match="too few subjects to split: 3"):
        make_strategy(_config(tmp_path, "run")).run()


def test_split_parts_are_disjoint():
    config = SearchConfig(data_path="x")
    split = strategy.split_for_search(config, [f"S{i:02d}" for i in range(20)])
    parts = [set(split[k]) for k in ("weights", "arch", "val", "test")]
    assert sum(len(p) for p in parts) == 20
    assert set().union(*parts) == {f"S{i:02d}" for i in range(20)}
    assert len(split["arch"]) == len(split["train"]) // 2


def test_out_of_memory_names_what_to_lower(tmp_path, fake_cohort, monkeypatch):
    def no_memory(self, context):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("sleepnas.search.darts_search.DartsSearch._run", no_memory)
    with pytest.raises(SleepnasError, match="out of memory.*lower --batch-size, --init-channels"):
        make_strategy(_config(tmp_path, "run")).run()


def test_search_config_rejects_bad_budget():
    with pytest.raises(SleepnasError, match="invalid --latency-budget-ms 0.0"):
        SearchConfig(data_path="x", latency_budget_ms=0)
    with pytest.raises(SleepnasError, match="invalid --flops-budget -1.0"):
        SearchConfig(data_path="x", flops_budget=-1)


def test_search_config_round_trips():
    config = SearchConfig(data_path="x", ops=("conv_3x1", "identity"), latency_budget_ms=2.5)
    assert SearchConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.slow
def test_search_on_synthetic_recordings(tmp_path, monkeypatch):
    synth = pytest.importorskip("sleepnas.tools.synth")
    monkeypatch.setenv("SLEEPNAS_PROGRESS", "0")
    data = tmp_path / "data"
    synth.synthesize_cohort(data, subjects=4, nights=1, seed=0, hours=1.0)
    config = SearchConfig(data_path=str(data), save_dir=str(tmp_path / "run"),
                          cache_dir=str(tmp_path / "cache"),
                          **{**TINY_OPTIONS, "num_epochs": 1, "n_times": 3000})
    result = make_strategy(config, measure_latency=False).run()
    for name in RUN_FILES:
        assert (tmp_path / "run" / name).is_file(), name
    assert result.results["search_seconds"] > 0
    shutil.rmtree(tmp_path / "cache")
