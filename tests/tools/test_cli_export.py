"""``sleepnas export``: output, INT8 files, and bad input that leaves no file behind."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from sleepnas.export import onnx_export
from sleepnas.search.models import build_model
from tests.clitools import run_cli
from tests.export.runs import make_run_dir


@pytest.fixture
def run(tmp_path):
    return make_run_dir(tmp_path / "run", model="tinysleepnet")


def _onnx_files(folder):
    return sorted(p.name for p in folder.rglob("*.onnx*"))


@pytest.mark.slow
def test_export_writes_model(run, tmp_path):
    output = tmp_path / "out" / "model.onnx"

    code, stdout, stderr = run_cli(["-q", "export", str(run), "-o", str(output), "--parity-windows", "8"])

    assert code == 0, stderr
    assert output.is_file()
    assert f"wrote {output} ({output.stat().st_size} bytes" in stdout
    assert "parity: largest logit difference" in stdout
    assert "equal predicted stages 100.00% of 8 windows" in stdout
    assert {p.key for p in onnx.load(str(output)).metadata_props} >= set(onnx_export.METADATA_KEYS)


@pytest.mark.slow
def test_export_json_report(run, tmp_path):
    output = tmp_path / "model.onnx"

    code, stdout, stderr = run_cli(["-q", "export", str(run), "-o", str(output), "--parity-windows", "4",
                                    "--no-simplify", "--opset", "18", "--json"])

    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["output"] == str(output)
    assert report["opset"] == 18
    assert report["simplified"] is False
    assert report["parity"]["passed"] is True
    assert report["parity"]["n_windows"] == 4
    assert report["model_bytes"] == output.stat().st_size


@pytest.mark.slow
def test_export_int8_writes_both(run, tmp_path):
    output = tmp_path / "model.onnx"

    code, stdout, stderr = run_cli(["-q", "export", str(run), "-o", str(output), "--quantize", "int8",
                                    "--parity-windows", "8"])

    assert code == 0, stderr
    assert _onnx_files(tmp_path) == ["model.float.onnx", "model.onnx"]
    assert f"float model: {tmp_path / 'model.float.onnx'}" in stdout
    assert "p50 latency at batch 1, 1 thread(s): float" in stdout
    assert "equal predicted stages INT8 vs float" in stdout


def test_export_without_weights_rejected(tmp_path):
    run = make_run_dir(tmp_path / "run", model="tinysleepnet", weights=False)

    code, stdout, stderr = run_cli(["export", str(run), "-o", str(tmp_path / "model.onnx")])

    assert code == 1
    assert stderr.strip() == (f"Error: run directory {run} has no weights.pt (the run has not finished "
                              f"training): expected config.json, window_spec.json, weights.pt")
    assert _onnx_files(tmp_path) == []


def test_export_missing_run_rejected(tmp_path):
    code, _, stderr = run_cli(["export", str(tmp_path / "none"), "-o", str(tmp_path / "model.onnx")])

    assert code == 1
    assert f"run directory {tmp_path / 'none'} not found" in stderr
    assert _onnx_files(tmp_path) == []


def test_export_low_opset_rejected(run, tmp_path):
    code, _, stderr = run_cli(["export", str(run), "-o", str(tmp_path / "model.onnx"), "--opset", "12"])

    assert code == 1
    assert "invalid --opset 12: expected 18 to" in stderr
    assert _onnx_files(tmp_path) == []


def test_export_unknown_quantization_rejected(run, tmp_path):
    code, _, stderr = run_cli(["export", str(run), "-o", str(tmp_path / "model.onnx"), "--quantize", "fp16"])

    assert code == 2
    assert "Invalid value for '--quantize': 'fp16'" in stderr


def test_export_output_directory_rejected(run, tmp_path):
    (tmp_path / "folder.onnx").mkdir()

    code, _, stderr = run_cli(["export", str(run), "-o", str(tmp_path / "folder.onnx")])

    assert code != 0
    assert "folder.onnx" in stderr


def test_export_missing_data_path_rejected(run, tmp_path):
    code, _, stderr = run_cli(["export", str(run), "-o", str(tmp_path / "model.onnx"),
                               "--data-path", str(tmp_path / "absent")])

    assert code == 1
    assert f"--data-path {tmp_path / 'absent'} not found" in stderr
    assert _onnx_files(tmp_path) == []


class _ExportTrap(torch.nn.Module):
    """Adds 0.25 to the logits only while being exported, so parity must fail."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        return logits + 0.25 if torch.compiler.is_exporting() else logits


@pytest.mark.slow
def test_export_parity_failure_no_file(run, tmp_path, monkeypatch):
    model, spec, config = build_model(run)
    monkeypatch.setattr(onnx_export, "_load_run_model", lambda run_dir: (_ExportTrap(model), spec, config))

    code, _, stderr = run_cli(["-q", "export", str(run), "-o", str(tmp_path / "model.onnx"),
                               "--parity-windows", "4", "--quantize", "int8"])

    assert code == 1
    assert len(stderr.strip().splitlines()) == 1
    assert "parity check failed" in stderr
    assert "largest logit difference 0.25 (tolerance 0.0001)" in stderr
    assert "equal predicted stages 100.00% of 4 windows" in stderr
    assert _onnx_files(tmp_path) == []


@pytest.mark.slow
def test_export_data_of_other_channels(tmp_path, monkeypatch):
    from sleepnas.runtime.spec import WindowSpec

    synth = pytest.importorskip("sleepnas.tools.synth")
    monkeypatch.setenv("SLEEPNAS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    synth.synthesize_cohort(data, subjects=1, nights=1, seed=0, hours=0.5)
    spec = WindowSpec(channels=("EEG C3-A2", "EEG Pz-Oz"), scale=(20.0, 15.0))
    run = make_run_dir(tmp_path / "run", model="tinysleepnet", spec=spec,
                       split={"train": ["SC400"], "val": ["SC400"], "test": ["SC400"]})

    code, _, stderr = run_cli(["-q", "export", str(run), "-o", str(tmp_path / "model.onnx"),
                               "--data-path", str(data)])

    assert code == 1
    assert "has no channel 'EEG C3-A2'" in stderr
    assert _onnx_files(tmp_path) == []
