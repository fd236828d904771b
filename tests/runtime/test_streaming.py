"""Streaming: chunks of any size give exactly the hypnogram of batch scoring."""

from __future__ import annotations

import numpy as np
import pytest

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.recordings import read_signals
from sleepnas.runtime.scoring import Scorer, ScoreResult, score_recording, score_signals
from tests.runtime.conftest import varying_signal


def _stream(model, data, chunk_sizes, batch_size=64):
    scorer = Scorer(model, batch_size=batch_size)
    results = []
    position = 0
    for size in chunk_sizes:
        results.extend(scorer.push(data[:, position:position + size]))
        position += size
    assert position >= data.shape[1]
    leftover = scorer.flush()
    return ScoreResult.from_windows(results, model.spec, leftover_samples=leftover)


def _random_chunks(rng, n_samples, high):
    sizes = []
    while sum(sizes) < n_samples:
        sizes.append(int(rng.integers(0, high)))
    return sizes


@pytest.mark.parametrize("seed, high, batch_size", [(0, 500, 64), (1, 9000, 2), (2, 40, 3),
                                                     (3, 20000, 1)])
def test_stream_equals_batch(linear_model, seed, high, batch_size):
    rng = np.random.default_rng(seed)
    data = (varying_signal(17 * 3000 + 777, seed=seed) * 1e-6).astype(np.float32)
    data[0, 4 * 3000 + 5:4 * 3000 + 300] = np.nan
    data[1, 9 * 3000:10 * 3000] = 0.0
    batch = score_signals(linear_model, data, batch_size=16)
    streamed = _stream(linear_model, data, _random_chunks(rng, data.shape[1], high), batch_size)

    assert streamed.n_windows == batch.n_windows == 17
    np.testing.assert_array_equal(streamed.labels, batch.labels)
    np.testing.assert_array_equal(streamed.onsets_s, batch.onsets_s)
    np.testing.assert_allclose(streamed.proba, batch.proba, atol=1e-6)
    assert streamed.flags == batch.flags
    assert streamed.flags[4] == "NaN in EEG Fpz-Cz"
    assert streamed.flags[9] == "flat EMG submental"
    assert streamed.leftover_samples == batch.leftover_samples == 777


def test_stream_of_edf_equals_recording(linear_model, psg_path):
    data, _ = read_signals(psg_path, linear_model.spec.channels)
    batch = score_recording(linear_model, psg_path)
    streamed = _stream(linear_model, data, _random_chunks(np.random.default_rng(9), data.shape[1], 4000))
    assert streamed.stages == batch.stages
    np.testing.assert_allclose(streamed.proba, batch.proba, atol=1e-6)


def test_push_returns_windows_as_completed(linear_model):
    data = (varying_signal(3 * 3000, seed=4) * 1e-6).astype(np.float32)
    scorer = Scorer(linear_model)

    assert scorer.push(data[:, :2999]) == []
    assert scorer.pending_samples == 2999
    first = scorer.push(data[:, 2999:3001])
    assert [w.index for w in first] == [0]
    assert first[0].onset_s == 0.0
    assert scorer.pending_samples == 1
    rest = scorer.push(data[:, 3001:])
    assert [w.index for w in rest] == [1, 2]
    assert [w.onset_s for w in rest] == [30.0, 60.0]
    assert scorer.n_windows == 3
    assert scorer.flush() == 0


def test_window_result_fields(linear_model):
    data = (varying_signal(3000, seed=5) * 1e-6).astype(np.float32)
    (window,) = Scorer(linear_model).push(data)
    batch = score_signals(linear_model, data)
    assert window.stage == batch.stages[0]
    assert len(window.probabilities) == 5
    assert sum(window.probabilities) == pytest.approx(1.0, abs=1e-6)
    assert window.flag == ""


def test_flush_reports_leftover_and_resets(linear_model):
    data = (varying_signal(2 * 3000, seed=6) * 1e-6).astype(np.float32)
    scorer = Scorer(linear_model)
    scorer.push(data[:, :4500])
    assert scorer.flush() == 1500
    assert scorer.pending_samples == 0
    assert scorer.flush() == 0

    # After a flush the stream continues with a fresh window and the next index.
    (window,) = scorer.push(data[:, :3000])
    assert window.index == 1
    assert window.onset_s == 30.0


def test_memory_stays_one_window(linear_model):
    data = (varying_signal(40 * 3000 + 10, seed=7) * 1e-6).astype(np.float32)
    scorer = Scorer(linear_model, batch_size=4)
    results = scorer.push(data)
    assert len(results) == 40
    assert scorer.pending_samples == 10
    assert scorer._buffer.shape == (2, 3000)


@pytest.mark.parametrize("shape", [(3, 100), (100,), (2, 3, 4)])
def test_push_of_wrong_shape_rejected(linear_model, shape):
    with pytest.raises(SleepnasError, match=r"expected \(2, n_samples\) in channel order EEG Fpz-Cz"):
        Scorer(linear_model).push(np.zeros(shape, np.float32))


def test_invalid_batch_size_rejected(linear_model):
    with pytest.raises(SleepnasError, match="--batch-size 0"):
        Scorer(linear_model, batch_size=0)
