"""Run directory: creation rules, JSON and state files, RNG capture, versions, log file."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.spec import WindowSpec
from sleepnas.search import rundir


def test_create_default_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = rundir.create_run_dir(prefix="train")
    assert path.is_dir()
    assert path.parent.name == "runs"
    assert path.name.startswith("train-")


def test_create_rejects_existing_run(tmp_path):
    rundir.write_json(tmp_path, rundir.CONFIG, {"model": "tinysleepnet"})
    with pytest.raises(SleepnasError, match="already contains a run"):
        rundir.create_run_dir(tmp_path)
    assert rundir.create_run_dir(tmp_path, resume=True) == tmp_path


def test_resume_needs_config(tmp_path):
    with pytest.raises(SleepnasError, match="cannot resume .* no config.json"):
        rundir.create_run_dir(tmp_path / "missing", resume=True)
    with pytest.raises(SleepnasError, match="--resume needs the run directory"):
        rundir.create_run_dir(None, resume=True)


def test_json_and_spec_round_trip(tmp_path):
    spec = WindowSpec(channels=("EEG Fpz-Cz",), scale=(12.5,))
    rundir.write_window_spec(tmp_path, spec)
    assert rundir.read_window_spec(tmp_path) == spec
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SleepnasError, match="invalid JSON in .*bad.json"):
        rundir.read_json(tmp_path, "bad.json")
    with pytest.raises(SleepnasError, match="results.json not found"):
        rundir.read_json(tmp_path, rundir.RESULTS)


def test_weights_round_trip(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(4)}
    rundir.save_weights(tmp_path, state)
    loaded = rundir.load_weights(tmp_path)
    assert torch.equal(loaded["w"], state["w"])
    assert torch.equal(loaded["n"], state["n"])
    assert not list(tmp_path.glob(".*.tmp"))


def test_corrupt_and_missing_weights(tmp_path):
    with pytest.raises(SleepnasError, match="weights file .*weights.pt not found"):
        rundir.load_weights(tmp_path)
    (tmp_path / rundir.WEIGHTS).write_bytes(b"\x00" * 10)
    with pytest.raises(SleepnasError, match="corrupt weights file"):
        rundir.load_weights(tmp_path)


def test_rng_state_restores_all_generators(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = rundir.capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])

    # The state survives a weights-only save and load.
    rundir.save_checkpoint(tmp_path, {"rng": state})
    restored = rundir.load_checkpoint(tmp_path)["rng"]
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    rundir.restore_rng_state(restored)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_versions_keys():
    found = rundir.versions()
    assert set(found) == {"sleepnas", "torch", "onnx", "onnxruntime", "numpy", "python"}
    assert found["torch"] == torch.__version__.split("+")[0] or found["torch"].startswith(
        torch.__version__.split("+")[0])


def test_log_file_receives_sleepnas_log(tmp_path):
    log = logging.getLogger("sleepnas")
    previous = log.level
    log.setLevel(logging.INFO)
    handler = rundir.add_log_file(tmp_path)
    try:
        logging.getLogger("sleepnas.search.test").info("epoch 1 done")
    finally:
        log.removeHandler(handler)
        handler.close()
        log.setLevel(previous)
    assert "epoch 1 done" in (tmp_path / rundir.LOG).read_text()
