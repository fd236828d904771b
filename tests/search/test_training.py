"""Training loop: learning, class weights, early stopping, checkpoints and bit-exact resume."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch
from torch import nn

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.spec import WindowSpec
from sleepnas.search import rundir
from sleepnas.search.training import (
    TrainConfig,
    class_weights,
    evaluate_model,
    make_data,
    train_model,
)

N_CHANS, N_TIMES = 2, 300
FREQS_HZ = np.array([1.0, 3.0, 6.0, 10.0, 15.0])


def _windows(n: int, seed: int = 0, labels: np.ndarray | None = None):
    """Each class is a sine of its own frequency in noise: separable, but not trivially."""
    rng = np.random.default_rng(seed)
    if labels is None:
        labels = rng.integers(0, 5, n)
    t = np.arange(N_TIMES) / 100.0
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    signal_uv = 30.0 * np.sin(2 * np.pi * FREQS_HZ[labels][:, None, None] * t + phase)
    windows = (signal_uv + rng.normal(0, 15.0, (n, N_CHANS, N_TIMES)) + 100.0).astype(np.float32)
    return windows, labels


def _data(n: int = 480, seed: int = 0, labels: np.ndarray | None = None):
    windows, labels = _windows(n, seed, labels)
    subjects = np.array([f"s{i % 6}" for i in range(n)])
    spec = WindowSpec(channels=("EEG a", "EEG b"), sfreq=100.0, window_s=3.0)
    split = {"train": ["s0", "s1", "s2", "s3"], "val": ["s4"], "test": ["s5"]}
    return make_data(windows, labels, subjects, spec, split)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv1d(N_CHANS, 8, 15, stride=3), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.Dropout(0.2), nn.AdaptiveAvgPool1d(8), nn.Flatten(), nn.Linear(64, 5))


def _config(**kwargs) -> TrainConfig:
    values = {"epochs": 3, "lr": 0.05, "device": "cpu", "num_threads": 1}
    values.update(kwargs)
    return TrainConfig(**values)


def test_make_data_split_and_scale():
    data = _data()
    assert set(data.subjects[data.train_index]) == {"s0", "s1", "s2", "s3"}
    assert set(data.subjects[data.val_index]) == {"s4"}
    assert set(data.subjects[data.test_index]) == {"s5"}
    assert len(data.train_index) + len(data.val_index) + len(data.test_index) == 480

    # The scale comes from training windows only: refit on them and compare.
    expected = data.spec.fit_scale(data.windows[data.train_index]).scale
    assert data.spec.scale == pytest.approx(expected)


def test_make_data_rejects_overlap_and_empty():
    windows, labels = _windows(60)
    subjects = np.array([f"s{i % 3}" for i in range(60)])
    spec = WindowSpec(channels=("a", "b"), sfreq=100.0, window_s=3.0)
    with pytest.raises(SleepnasError, match=r"subjects \['s1'\] are in more than one part"):
        make_data(windows, labels, subjects, spec, {"train": ["s0", "s1"], "val": ["s1"]})
    with pytest.raises(SleepnasError, match="the val subjects .* have no windows"):
        make_data(windows, labels, subjects, spec, {"train": ["s0"], "val": ["nobody"]})
    wrong = WindowSpec(channels=("a", "b", "c"), sfreq=100.0, window_s=3.0)
    with pytest.raises(SleepnasError, match=r"the window spec expects \(3, 300\)"):
        make_data(windows, labels, subjects, wrong, {"train": ["s0"], "val": ["s1"]})


def test_training_learns_separable_task():
    data = _data()
    model = _net()
    result = train_model(model, data, _config(epochs=4), progress_bar=False)

    # Chance is 0.2 for five balanced classes.
    assert result.test["accuracy"] > 0.8
    assert result.test["macro_f1"] > 0.8
    assert result.test["n_windows"] == len(data.test_index)
    assert set(result.test["per_subject"]) == {"s5"}
    assert result.epochs_run == 4
    assert len(result.history) == 4
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_val_accuracy == max(r["val_accuracy"] for r in result.history)
    assert result.final_val_accuracy == result.history[-1]["val_accuracy"]


def test_model_keeps_best_epoch_weights():
    data = _data()
    model = _net()
    result = train_model(model, data, _config(epochs=4), progress_bar=False)
    val = evaluate_model(model, data, "val", per_subject=False)
    assert val["macro_f1"] == pytest.approx(result.best_val_macro_f1)
    assert result.history[result.best_epoch - 1]["val_macro_f1"] == pytest.approx(result.best_val_macro_f1)


def test_class_weights_inverse_frequency():
    weights = class_weights(np.array([0, 0, 0, 1, 2, 2]), 4)
    # n / (present classes * count): 6 / (3 * 3), 6 / (3 * 1), 6 / (3 * 2); absent class 0.
    assert weights == pytest.approx([2 / 3, 2.0, 1.0, 0.0])
    assert class_weights(np.array([0, 1, 2, 3, 4]), 5) == pytest.approx(np.ones(5))


def test_class_weighted_loss_recorded_and_differs():
    rng = np.random.default_rng(1)
    labels = rng.choice(5, size=480, p=[0.5, 0.05, 0.3, 0.1, 0.05])
    data = _data(labels=labels)
    plain = train_model(_net(), data, _config(epochs=1), progress_bar=False)
    weighted = train_model(_net(), data, _config(epochs=1, class_weighted=True), progress_bar=False)
    expected = class_weights(labels[data.train_index], 5)
    assert plain.class_weights is None
    assert weighted.class_weights == pytest.approx(expected)
    assert weighted.history[0]["train_loss"] != pytest.approx(plain.history[0]["train_loss"])


def test_early_stopping_on_macro_f1():
    # Random labels: validation macro-F1 stops improving, and patience 1 ends the run.
    rng = np.random.default_rng(2)
    data = _data(labels=rng.integers(0, 5, 480))
    windows = data.windows.copy()
    rng.shuffle(windows)
    data.windows = windows
    result = train_model(_net(), data, _config(epochs=12, patience=1, lr=0.01), progress_bar=False)
    assert result.stopped_early
    assert result.epochs_run < 12
    assert result.epochs_run == result.best_epoch + 1


def test_checkpoint_loads_weights_only(tmp_path):
    data = _data()
    train_model(_net(), data, _config(epochs=1), run_dir=tmp_path, progress_bar=False)
    checkpoint = torch.load(tmp_path / rundir.CHECKPOINT, weights_only=True)
    assert checkpoint["state"]["epoch"] == 1
    assert checkpoint["split"] == data.split
    assert set(checkpoint["rng"]) >= {"torch", "numpy", "python"}
    assert (tmp_path / rundir.WEIGHTS).is_file()


def test_resume_equals_uninterrupted(tmp_path):
    data = _data()
    config = _config(epochs=3)
    whole = train_model(_net(), data, config, run_dir=tmp_path / "whole", progress_bar=False)

    def interrupt(epoch: int, batch: int) -> None:
        if (epoch, batch) == (2, 3):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train_model(_net(), data, config, run_dir=tmp_path / "parts", batch_callback=interrupt,
                    progress_bar=False)
    saved = torch.load(tmp_path / "parts" / rundir.CHECKPOINT, weights_only=True)
    assert (saved["state"]["epoch"], saved["state"]["batch"]) == (1, 3)

    # Disturb the global generators: the checkpoint must restore them.
    torch.manual_seed(1234)
    np.random.seed(99)
    resumed = train_model(_net(seed=7), data, config, run_dir=tmp_path / "parts", resume=True,
                          progress_bar=False)

    expected = rundir.load_weights(tmp_path / "whole")
    got = rundir.load_weights(tmp_path / "parts")
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    for a, b in zip(whole.history, resumed.history):
        assert a["train_loss"] == b["train_loss"]
        assert a["val_macro_f1"] == b["val_macro_f1"]
    assert whole.test["confusion"] == resumed.test["confusion"]


def test_resume_rejects_other_options(tmp_path):
    data = _data()
    train_model(_net(), data, _config(epochs=1), run_dir=tmp_path, progress_bar=False)
    with pytest.raises(SleepnasError, match=r"other training options \(batch_size: 32 -> 16"):
        train_model(_net(), data, _config(epochs=1, batch_size=16), run_dir=tmp_path, resume=True)


def test_resume_rejects_corrupt_checkpoint(tmp_path):
    (tmp_path / rundir.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(SleepnasError, match="corrupt checkpoint"):
        train_model(_net(), _data(), _config(), run_dir=tmp_path, resume=True)


def test_config_rejects_bad_values():
    with pytest.raises(SleepnasError, match="invalid optimizer 'rmsprop'"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(SleepnasError, match="invalid --epochs 0"):
        TrainConfig(epochs=0)
    with pytest.raises(SleepnasError, match="unknown keys"):
        TrainConfig.from_dict({"epochs": 2, "momentum_typo": 0.5})
    assert TrainConfig(optimizer="adam").learning_rate == 1e-3
    assert TrainConfig.from_dict(TrainConfig(epochs=3).to_dict()) == TrainConfig(epochs=3)


def test_divergence_is_reported():
    data = _data()
    with pytest.raises(SleepnasError, match="training diverged"):
        train_model(_net(), data, _config(lr=1e30, grad_clip=None), progress_bar=False)


class _DropPathNet(nn.Module):
    """A tiny model that records the drop-path probability of each training forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()
        self.drop_path_prob = 0.0
        self.seen: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(self.drop_path_prob)
        return self.net(x)


def test_drop_path_rises_linearly():
    model = _DropPathNet()
    train_model(model, _data(), _config(epochs=4, drop_path_prob=0.2, max_batches_per_epoch=1),
                progress_bar=False)
    # One mini-batch per epoch: 0.2 * (epoch - 1) / 4.
    assert model.seen == pytest.approx([0.0, 0.05, 0.1, 0.15])


def test_checkpoint_of_other_kind_rejected(tmp_path):
    rundir.save_checkpoint(tmp_path, {"kind": "search", "alphas": torch.zeros(2)})
    with pytest.raises(SleepnasError, match="not a sleepnas training checkpoint"):
        train_model(_net(), _data(), _config(), run_dir=tmp_path, resume=True)


def test_resume_rejects_changed_data(tmp_path):
    data = _data()
    train_model(_net(), data, _config(epochs=1), run_dir=tmp_path, progress_bar=False)
    other = _data(seed=5)
    with pytest.raises(SleepnasError, match="another window spec or normalization"):
        train_model(_net(), other, _config(epochs=1), run_dir=tmp_path, resume=True)
