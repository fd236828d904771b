"""``sleepnas bench``: the JSON records, the table, bad input, and running without torch."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sleepnas.runtime.spec import WindowSpec
from sleepnas.tools.bench import BENCH_KEYS, format_table
from tests.clitools import run_cli
from tests.sleepmodels import build_linear_model

REPO = Path(__file__).resolve().parents[2]

SPEC = WindowSpec(channels=("EEG Fpz-Cz", "EEG Pz-Oz"), scale=(20.0, 15.0))

#: Few repeats: these tests check the records, not the speed.
QUICK = ["--warmup", "1", "--repeats", "5"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    first = build_linear_model(folder / "first.onnx", SPEC)
    second = build_linear_model(folder / "second.onnx", SPEC)
    return first, second


def _bench_json(args: list[str]) -> list[dict]:
    code, stdout, stderr = run_cli(["-q", "bench", *args, "--json", *QUICK])
    assert code == 0, stderr
    return json.loads(stdout)


def test_bench_json_has_every_key(models):
    records = _bench_json([str(models[0]), "--batch-sizes", "1,4", "--threads", "1,2"])

    assert len(records) == 4
    assert [(r["threads"], r["batch_size"]) for r in records] == [(1, 1), (1, 4), (2, 1), (2, 4)]
    for record in records:
        assert set(BENCH_KEYS) <= set(record)
        assert record["model"] == str(models[0])


def test_bench_json_values_sane(models):
    records = _bench_json([str(models[0]), "--batch-sizes", "1,4"])

    for record in records:
        assert 0 < record["p50_ms"] <= record["p90_ms"] <= record["p99_ms"]
        assert record["cold_start_ms"] > 0
        assert record["throughput_windows_per_s"] > 0
        assert math.isfinite(record["throughput_windows_per_s"])
        assert record["peak_rss_mb"] >= record["baseline_rss_mb"] > 0
        assert record["model_bytes"] == models[0].stat().st_size
        assert record["engine"] == "onnxruntime"


def test_bench_compare_lists_each_model(models):
    first, second = models
    records = _bench_json([str(first), "--compare", str(second), "--batch-sizes", "1"])

    assert [r["model"] for r in records] == [str(first), str(second)]


def test_bench_table_shows_ratios():
    records = [
        {"model": "a.onnx", "engine": "onnxruntime", "threads": 1, "batch_size": 1, "p50_ms": 2.0,
         "p90_ms": 3.0, "p99_ms": 4.0, "throughput_windows_per_s": 500.0, "cold_start_ms": 10.0,
         "peak_rss_mb": 60.0, "model_bytes": 100},
        {"model": "b.onnx", "engine": "onnxruntime", "threads": 1, "batch_size": 1, "p50_ms": 1.0,
         "p90_ms": 1.5, "p99_ms": 2.0, "throughput_windows_per_s": 1000.0, "cold_start_ms": 5.0,
         "peak_rss_mb": 61.0, "model_bytes": 50},
    ]

    lines = format_table(records).splitlines()

    assert lines[0].endswith("p50 ratio  throughput ratio")
    assert lines[1].split()[-2:] == ["1.00", "1.00"]
    assert lines[2].split()[-2:] == ["0.50", "2.00"]


def test_bench_table_from_cli(models):
    code, stdout, stderr = run_cli(["-q", "bench", str(models[0]), "--batch-sizes", "1", *QUICK])

    assert code == 0, stderr
    assert "p50 ms" in stdout.splitlines()[0]
    assert "first.onnx" in stdout.splitlines()[1]


def test_bench_corrupt_file_rejected(tmp_path):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"\x08\x07not an onnx model" * 10)

    code, _, stderr = run_cli(["bench", str(path), *QUICK])

    assert code == 1
    assert f"cannot load model {path}: not a valid ONNX file" in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_bench_missing_metadata_named(tmp_path):
    path = build_linear_model(tmp_path / "plain.onnx", SPEC, drop_keys=["sleepnas.window_spec"])

    code, _, stderr = run_cli(["bench", str(path), *QUICK])

    assert code == 1
    assert "not a sleepnas model: metadata key 'sleepnas.window_spec' is missing" in stderr


def test_bench_missing_file_rejected(tmp_path):
    code, _, stderr = run_cli(["bench", str(tmp_path / "absent.onnx"), *QUICK])

    assert code == 1
    assert "not found" in stderr


@pytest.mark.parametrize("option, value", [("--threads", "0"), ("--threads", "one"),
                                           ("--batch-sizes", "1,,x"), ("--batch-sizes", "")])
def test_bench_invalid_counts_rejected(models, option, value):
    code, _, stderr = run_cli(["bench", str(models[0]), option, value, *QUICK])

    assert code == 1
    assert f"invalid {option} {value!r}: expected integers >= 1" in stderr


def test_bench_torch_run_other_channels(models, tmp_path):
    from tests.export.runs import make_run_dir

    other = WindowSpec(channels=("EEG Fpz-Cz",), scale=(20.0,))
    run = make_run_dir(tmp_path / "run", model="tinysleepnet", spec=other)

    code, _, stderr = run_cli(["bench", str(models[0]), "--torch", str(run), *QUICK])

    assert code == 1
    assert "was built for channels ['EEG Fpz-Cz'] x 3000 samples" in stderr


def test_bench_torch_run_without_weights(models, tmp_path):
    from tests.export.runs import make_run_dir

    run = make_run_dir(tmp_path / "run", model="tinysleepnet", spec=SPEC, weights=False)

    code, _, stderr = run_cli(["bench", str(models[0]), "--torch", str(run), *QUICK])

    assert code == 1
    assert f"invalid --torch {run}: expected a finished run directory" in stderr


@pytest.mark.slow
def test_bench_torch_side_by_side(models, tmp_path):
    from tests.export.runs import make_run_dir

    run = make_run_dir(tmp_path / "run", model="tinysleepnet", spec=SPEC)
    records = _bench_json([str(models[0]), "--torch", str(run), "--batch-sizes", "1"])

    assert [r["engine"] for r in records] == ["onnxruntime", "torch"]
    assert records[1]["model"] == str(run)
    assert records[1]["model_bytes"] == (run / "weights.pt").stat().st_size
    assert 0 < records[1]["p50_ms"] <= records[1]["p90_ms"] <= records[1]["p99_ms"]


_BLOCK_TORCH = textwrap.dedent("""
    import sys

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is hidden for this test")
            return None

    sys.meta_path.insert(0, BlockTorch())
""")


def _run_without_torch(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    """Run ``sleepnas ARGS`` in processes (the CLI and its workers) that cannot import torch."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_BLOCK_TORCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    script = "from sleepnas.tools.cli import main; main()"
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)


def test_torch_hidden_by_blocker(tmp_path):
    process = _run_without_torch(tmp_path, ["--version"])
    site = tmp_path / "site"
    check = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(site)})

    assert process.returncode == 0, process.stderr
    assert check.returncode != 0
    assert "torch is hidden for this test" in check.stderr


def test_bench_runs_without_torch(models, tmp_path):
    process = _run_without_torch(tmp_path, ["-q", "bench", str(models[0]), "--batch-sizes", "1,2",
                                            "--json", *QUICK])

    assert process.returncode == 0, process.stderr
    records = json.loads(process.stdout)
    assert len(records) == 2
    assert all(set(BENCH_KEYS) <= set(r) for r in records)


def test_bench_torch_option_without_torch(models, tmp_path):
    from tests.export.runs import make_run_dir

    run = make_run_dir(tmp_path / "run", model="tinysleepnet", spec=SPEC)
    process = _run_without_torch(tmp_path, ["bench", str(models[0]), "--torch", str(run), *QUICK])

    assert process.returncode == 1
    assert "--torch needs torch, which is not installed" in process.stderr
