"""The demo job end to end: ``sleepnas demo --quick`` and every artifact it leaves."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from sleepnas.runtime.model import load_model
from sleepnas.runtime.scoring import score_recording
from sleepnas.search.genotype import Genotype
from tests.clitools import run_cli

RESULT_KEYS = ("accuracy", "macro_f1", "kappa", "per_stage_f1", "confusion", "best_val_accuracy",
               "final_val_accuracy", "params", "flops", "latency_ms", "search_seconds", "versions",
               "seed")
BENCH_KEYS = ("model", "threads", "batch_size", "p50_ms", "p90_ms", "p99_ms",
              "throughput_windows_per_s", "cold_start_ms", "peak_rss_mb", "model_bytes")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code, stdout, stderr = run_cli(["-q", "demo", str(out / "run"), "--quick",
                                    "--cache-dir", str(out / "cache")])
    assert code == 0, stderr
    return out / "run", stdout


@pytest.mark.slow
def test_demo_report_names_results(demo_dir):
    _, stdout = demo_dir
    assert "Cell 0 (normal)" in stdout
    assert "winner" in stdout
    assert "reference" in stdout
    assert "synthetic" in stdout


@pytest.mark.slow
def test_demo_genotype_and_results(demo_dir):
    run, _ = demo_dir
    genotype = Genotype.load(run / "search" / "genotype.json")
    assert Genotype.from_json(genotype.to_json()) == genotype
    for name in ("search", "reference"):
        results = json.loads((run / name / "results.json").read_text())
        missing = [key for key in RESULT_KEYS if key not in results]
        assert not missing, f"{name}/results.json lacks {missing}"
        assert 0.0 <= results["accuracy"] <= 1.0
        assert results["params"] > 0


@pytest.mark.slow
def test_demo_onnx_scores_a_night(demo_dir):
    run, _ = demo_dir
    model = load_model(run / "winner.onnx")
    night = sorted((run / "cohort").glob("*-PSG.edf"))[0]
    result = score_recording(model, night)
    assert result.n_windows > 0
    np.testing.assert_allclose(result.proba.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_demo_hypnogram_csv(demo_dir):
    run, _ = demo_dir
    (csv_path,) = sorted((run / "scores").glob("*.hypnogram.csv"))
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert rows
    assert {"onset_s", "duration_s", "stage", "flag", "p_W", "p_REM"} <= set(rows[0])
    assert sorted((run / "scores").glob("*.png"))


@pytest.mark.slow
def test_demo_bench_json(demo_dir):
    run, _ = demo_dir
    records = json.loads((run / "bench.json").read_text())
    models = {record["model"] for record in records}
    assert len(models) == 3
    for record in records:
        assert set(BENCH_KEYS) <= set(record)
        assert 0 < record["p50_ms"] <= record["p90_ms"] <= record["p99_ms"]
