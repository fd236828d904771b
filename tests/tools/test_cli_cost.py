"""``sleepnas cost``: export-ops, measure (without torch), build, check, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sleepnas.search.cost import LatencyTable
from tests.clitools import run_cli

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

# Makes `import torch` fail in a child process, as on a device with the base install only.
HIDE_TORCH = textwrap.dedent("""
    import sys

    class HideTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"{name} is hidden in this test")
            return None

    sys.meta_path.insert(0, HideTorch())
    from sleepnas.tools.cli import main
    try:
        main(sys.argv[1:])
    finally:
        print("TORCH_LOADED" if "torch" in sys.modules else "TORCH_ABSENT", file=sys.stderr)
""")

# A network small enough to export and time in a few seconds.
TINY_OPTIONS = ["--preset", "small", "--init-channels", "4", "--num-cells", "3",
                "--num-nodes", "1", "--ops", "conv_1x1,identity"]


def write_model(path: Path, op: str, shape=(1, 4, 16)) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture
def op_dir(tmp_path):
    """An op folder as `cost export-ops` writes it, with hand-made models."""
    folder = tmp_path / "ops"
    folder.mkdir()
    write_model(folder / "relu.onnx", "Relu")
    write_model(folder / "tanh.onnx", "Tanh")
    write_model(folder / "empty.onnx", "Identity")
    manifest = {"format": 1, "empty_model": "empty.onnx",
                "entries": [{"key": "op:relu", "file": "relu.onnx"},
                            {"key": "op:tanh", "file": "tanh.onnx"}],
                "calibrations": [{"network_id": "n1", "samples": [
                    {"file": "tanh.onnx", "keys": ["op:relu", "op:tanh"]}]}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_measure_writes_table(op_dir, tmp_path):
    output = tmp_path / "table.json"
    code, stdout, stderr = run_cli(["-q", "cost", "measure", str(op_dir), "-o", str(output),
                                    "--warmup", "1", "--repeats", "3"])
    assert code == 0, stderr
    assert "2 entries" in stdout
    table = LatencyTable.load(output)
    assert set(table.latency_ms) == {"op:relu", "op:tanh"}
    assert table.threads == 1
    assert table.run_overhead_ms > 0
    assert table.calibration("n1").keys == (("op:relu", "op:tanh"),)


def test_measure_runs_without_torch(op_dir, tmp_path):
    output = tmp_path / "table.json"
    args = ["-q", "cost", "measure", str(op_dir), "-o", str(output), "--threads", "1",
            "--warmup", "0", "--repeats", "2"]
    env = {**os.environ, "SLEEPNAS_PROGRESS": "0"}
    result = subprocess.run([sys.executable, "-c", HIDE_TORCH, *args], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "TORCH_ABSENT" in result.stderr
    assert set(json.loads(output.read_text())["latency_ms"]) == {"op:relu", "op:tanh"}


def test_measure_without_manifest(tmp_path):
    output = tmp_path / "table.json"
    code, _, stderr = run_cli(["cost", "measure", str(tmp_path), "-o", str(output)])
    assert code == 1
    assert "Error: no manifest.json in" in stderr
    assert "cost export-ops" in stderr
    assert not output.exists()


def test_measure_cpu_clock_needs_one_thread(op_dir, tmp_path):
    output = tmp_path / "table.json"
    code, _, stderr = run_cli(["cost", "measure", str(op_dir), "-o", str(output),
                               "--threads", "2", "--clock", "cpu"])
    assert code == 1
    assert "invalid clock 'cpu' with 2 threads" in stderr
    assert not output.exists()


def test_check_corrupt_latency_table(tmp_path):
    table = tmp_path / "table.json"
    table.write_text("not json")
    code, _, stderr = run_cli(["cost", "check", *TINY_OPTIONS, "--samples", "2",
                               "--latency-table", str(table)])
    assert code == 1
    assert f"invalid latency table {table}: not valid JSON" in stderr


def test_export_ops_unknown_op(tmp_path):
    code, _, stderr = run_cli(["cost", "export-ops", "--ops", "conv_3x1,warp", str(tmp_path / "o")])
    assert code == 1
    assert "unknown op 'warp'" in stderr
    assert "conv_1x1" in stderr


def test_build_unknown_preset(tmp_path):
    code, _, stderr = run_cli(["cost", "build", "--preset", "huge", "--cache-dir", str(tmp_path)])
    assert code == 1
    assert "unknown preset 'huge'" in stderr


@pytest.mark.slow
def test_export_then_measure(tmp_path):
    out = tmp_path / "ops"
    code, _, stderr = run_cli(["-q", "cost", "export-ops", *TINY_OPTIONS,
                               "--calibration-samples", "2", str(out)])
    assert code == 0, stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["calibrations"][0]["samples"]) == 2
    assert all((out / entry["file"]).is_file() for entry in manifest["entries"])

    table_file = tmp_path / "table.json"
    code, _, stderr = run_cli(["-q", "cost", "measure", str(out), "-o", str(table_file),
                               "--warmup", "1", "--repeats", "2"])
    assert code == 0, stderr
    table = LatencyTable.load(table_file)
    assert set(table.latency_ms) == {entry["key"] for entry in manifest["entries"]}
    assert len(table.calibrations[0].measured_ms) == 2


@pytest.mark.slow
def test_build_then_check_json(tmp_path):
    cache = ["--cache-dir", str(tmp_path)]
    runs = ["--warmup", "1", "--repeats", "3"]
    code, stdout, stderr = run_cli(["-q", "cost", "build", *TINY_OPTIONS, *cache, *runs,
                                    "--calibration-samples", "3"])
    assert code == 0, stderr
    assert "entries" in stdout

    code, stdout, stderr = run_cli(["-q", "cost", "check", *TINY_OPTIONS, *cache, *runs,
                                    "--samples", "3", "--json"])
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["samples"] == 3
    assert -1.0 <= report["spearman"] <= 1.0
    assert report["median_abs_pct_error"] >= 0
    assert len(report["measured_ms"]) == 3
    assert all(value > 0 for value in report["predicted_ms"])


def test_export_ops_for_channel_subset(tmp_path):
    code, out, err = run_cli(["-q", "cost", "export-ops", "--preset", "small", "--num-cells", "2",
                              "--ops", "conv_3x1,identity", "--calibration-samples", "0",
                              "--channels", "EEG Fpz-Cz,EOG horizontal", "--input-length", "3000",
                              "--scheme", "rk7", str(tmp_path / "ops")])
    assert code == 0, err
    manifest = json.loads((tmp_path / "ops" / "manifest.json").read_text())
    text = json.dumps(manifest)
    assert "1x2x3000" in text or "[1, 2, 3000]" in text
    assert "[1, 7, 3000]" not in text
