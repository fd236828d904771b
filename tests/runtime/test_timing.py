"""Timing ONNX files with onnxruntime: sessions, inputs, results and op folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sleepnas.runtime import timing
from sleepnas.runtime.errors import SleepnasError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402


def write_relu_model(path: Path, shape=("batch", 3, 8), op: str = "Relu") -> Path:
    """Write a one-node model ``y = op(x)`` with the given input shape."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_time_model_result_fields(tmp_path):
    path = write_relu_model(tmp_path / "relu.onnx")
    result = timing.time_model(path, threads=1, batch_size=4, warmup=2, repeats=7)
    assert result.repeats == 7
    assert len(result.latencies_ms) == 7
    assert result.batch_size == 4
    assert result.threads == 1
    assert result.warmup == 2
    assert result.cold_start_ms > 0
    assert all(value > 0 for value in result.latencies_ms)
    assert result.p50_ms == pytest.approx(float(np.median(result.latencies_ms)))
    assert min(result.latencies_ms) <= result.p50_ms <= result.p90_ms <= result.p99_ms
    assert result.p99_ms <= max(result.latencies_ms)


def test_result_to_dict_is_json(tmp_path):
    path = write_relu_model(tmp_path / "relu.onnx")
    record = timing.time_model(path, warmup=0, repeats=3).to_dict()
    decoded = json.loads(json.dumps(record))
    assert decoded["repeats"] == 3
    assert decoded["p50_ms"] == pytest.approx(float(np.median(record["latencies_ms"])))
    assert set(decoded) >= {"path", "threads", "batch_size", "cold_start_ms", "p90_ms", "p99_ms"}


def test_random_inputs_dynamic_batch(tmp_path):
    session = timing.make_session(write_relu_model(tmp_path / "relu.onnx"), threads=1)
    feed = timing.random_inputs(session, batch_size=5, seed=3)
    assert feed["x"].shape == (5, 3, 8)
    assert feed["x"].dtype == np.float32
    again = timing.random_inputs(session, batch_size=5, seed=3)
    np.testing.assert_array_equal(feed["x"], again["x"])


def test_random_inputs_fixed_batch_kept(tmp_path):
    session = timing.make_session(write_relu_model(tmp_path / "r.onnx", shape=(1, 2, 4)), 1)
    assert timing.random_inputs(session, batch_size=8)["x"].shape == (1, 2, 4)


def test_random_inputs_other_dynamic_axis(tmp_path):
    session = timing.make_session(write_relu_model(tmp_path / "r.onnx", shape=(1, "n", 4)), 1)
    with pytest.raises(SleepnasError, match="dynamic axis 1"):
        timing.random_inputs(session)


def test_make_session_missing_file(tmp_path):
    with pytest.raises(SleepnasError, match="ONNX file not found: .*nope.onnx"):
        timing.make_session(tmp_path / "nope.onnx", threads=1)


def test_make_session_corrupt_file(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"not a protobuf at all")
    with pytest.raises(SleepnasError, match="cannot load ONNX file .*bad.onnx"):
        timing.make_session(path, threads=1)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_make_session_invalid_threads(tmp_path, threads):
    path = write_relu_model(tmp_path / "relu.onnx")
    with pytest.raises(SleepnasError, match="invalid threads"):
        timing.make_session(path, threads=threads)


def test_time_model_invalid_repeats(tmp_path):
    path = write_relu_model(tmp_path / "relu.onnx")
    with pytest.raises(SleepnasError, match="invalid repeats 0"):
        timing.time_model(path, repeats=0)


def test_table_key_is_file_safe():
    key = timing.table_key("AMD EPYC 7B13 64-Core Processor", "1.32.0", 2)
    assert key == "amd-epyc-7b13-64-core-processor__ort-1.32.0__t2"
    assert timing.table_key("", "1.0", 1).startswith("unknown__")


def test_device_name_nonempty():
    assert timing.device_name().strip()


def write_op_dir(op_dir: Path) -> Path:
    """Write a tiny op folder: two op models, an empty model and the manifest."""
    op_dir.mkdir()
    write_relu_model(op_dir / "a.onnx", shape=(1, 4, 16))
    write_relu_model(op_dir / "b.onnx", shape=(1, 4, 16), op="Sigmoid")
    write_relu_model(op_dir / "empty.onnx", shape=(1, 4, 16), op="Identity")
    manifest = {"format": 1, "network": {"init_channels": 4}, "empty_model": "empty.onnx",
                "entries": [{"key": "op:a", "file": "a.onnx"}, {"key": "op:b", "file": "b.onnx"}],
                "calibrations": [{"network_id": "net1", "samples": [
                    {"file": "a.onnx", "keys": ["op:a"]},
                    {"file": "b.onnx", "keys": ["op:b", "op:b"]}]}]}
    (op_dir / "manifest.json").write_text(json.dumps(manifest))
    return op_dir


def test_measure_op_dir_table(tmp_path):
    op_dir = write_op_dir(tmp_path / "ops")
    table = timing.measure_op_dir(op_dir, threads=1, warmup=1, repeats=3, show_progress=False)
    assert set(table["latency_ms"]) == {"op:a", "op:b"}
    assert all(value > 0 for value in table["latency_ms"].values())
    assert table["run_overhead_ms"] > 0
    assert table["threads"] == 1
    assert table["batch_size"] == 1
    [calibration] = table["calibrations"]
    assert calibration["network_id"] == "net1"
    assert calibration["keys"] == [["op:a"], ["op:b", "op:b"]]
    assert len(calibration["measured_ms"]) == 2
    assert table["device"] == timing.device_name()
    assert table["format"] == timing.TABLE_FORMAT


def test_measure_op_dir_subset(tmp_path):
    op_dir = write_op_dir(tmp_path / "ops")
    table = timing.measure_op_dir(op_dir, keys=["op:b"], calibrate=False, warmup=0, repeats=2,
                                  show_progress=False)
    assert list(table["latency_ms"]) == ["op:b"]
    assert table["calibrations"] == []


def test_measure_op_dir_missing_manifest(tmp_path):
    with pytest.raises(SleepnasError, match="no manifest.json in .*cost export-ops"):
        timing.measure_op_dir(tmp_path)


def test_measure_op_dir_corrupt_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(SleepnasError, match="invalid op manifest"):
        timing.measure_op_dir(tmp_path)


def test_measure_op_dir_missing_model(tmp_path):
    op_dir = write_op_dir(tmp_path / "ops")
    (op_dir / "b.onnx").unlink()
    with pytest.raises(SleepnasError, match="b.onnx listed in .* is missing"):
        timing.measure_op_dir(op_dir)


def test_timing_imports_no_torch():
    code = "import sys, sleepnas.runtime.timing; print('torch' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "False"
