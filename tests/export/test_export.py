"""Export of run directories to ONNX: graph, dynamic batch, metadata and parity."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sleepnas.export import onnx_export
from sleepnas.export.onnx_export import METADATA_KEYS, export_run
from sleepnas.export.parity import (WindowSample, check_parity, random_windows, sample_windows,
                                    torch_logits)
from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.spec import WindowSpec
from sleepnas.search.genotype import Genotype
from sleepnas.search.models import build_model
from sleepnas.search.ops import OP_NAMES

from .runs import NORMAL_OPS, REDUCE_OPS, TINY_SPEC, genotype_with_ops, make_run_dir


@pytest.fixture(scope="module", params=["genotype", "tinysleepnet"])
def exported(request, tmp_path_factory):
    """A run of each kind and its export, made once per module."""
    base = tmp_path_factory.mktemp(request.param)
    run = make_run_dir(base / "run", model=request.param, data_path="/private/patient-042/night1")
    output = base / "model.onnx"
    report = export_run(run, output, parity_windows=16)
    return run, output, report


def test_genotype_uses_every_op():
    used = set(NORMAL_OPS) | set(REDUCE_OPS)

    assert used == set(OP_NAMES) - {"zero"}


@pytest.mark.slow
def test_export_passes_parity(exported):
    _, output, report = exported

    assert output.is_file()
    assert report.parity.passed
    assert report.parity.max_abs_diff <= 1e-4
    assert report.parity.stage_agreement == 1.0
    assert report.parity.n_windows == 16
    assert report.parity.source.startswith("random:")
    assert report.model_bytes == output.stat().st_size


@pytest.mark.slow
def test_export_dynamic_batch(exported):
    run, output, _ = exported
    model, spec, _ = build_model(run)
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (model_input,), (model_output,) = session.get_inputs(), session.get_outputs()

    assert model_input.name == "windows"
    assert model_output.name == "logits"
    assert model_input.shape == ["batch", spec.n_chans, spec.n_times]
    assert model_output.shape == ["batch", len(spec.stage_names)]
    for batch_size in (1, 3, 9):
        windows = random_windows(spec, batch_size, seed=batch_size)
        logits = session.run(None, {"windows": windows})[0]
        np.testing.assert_allclose(logits, torch_logits(model, windows), atol=1e-4)


@pytest.mark.slow
def test_export_metadata_round_trips(exported):
    run, output, _ = exported
    config = json.loads((run / "config.json").read_text())
    metadata = {p.key: p.value for p in onnx.load(str(output)).metadata_props}

    assert set(METADATA_KEYS) <= set(metadata)
    assert metadata["sleepnas.format"] == "1"
    assert WindowSpec.from_json(metadata["sleepnas.window_spec"]) == TINY_SPEC
    assert json.loads(metadata["sleepnas.stages"]) == ["W", "N1", "N2", "N3", "REM"]
    assert metadata["sleepnas.model"] == config["model"]
    assert json.loads(metadata["sleepnas.metrics"])["kappa"] == 0.58
    assert "confusion" not in json.loads(metadata["sleepnas.metrics"])
    assert set(json.loads(metadata["sleepnas.versions"])) == {"sleepnas", "torch", "onnx", "onnxruntime"}
    if config["model"] == "genotype":
        assert Genotype.from_json(metadata["sleepnas.genotype"]) == genotype_with_ops()
    else:
        assert metadata["sleepnas.genotype"] == ""


@pytest.mark.slow
def test_export_metadata_has_no_data_path(exported):
    _, output, _ = exported
    values = " ".join(p.value for p in onnx.load(str(output)).metadata_props)

    assert "patient-042" not in values


@pytest.mark.slow
def test_runtime_loads_export(exported):
    from sleepnas.runtime.model import load_model

    _, output, _ = exported
    model = load_model(output, threads=1)

    assert model.spec == TINY_SPEC
    assert tuple(model.stage_names) == TINY_SPEC.stage_names


@pytest.mark.slow
def test_export_leaves_no_temporary_files(exported):
    _, output, _ = exported

    assert sorted(p.name for p in output.parent.iterdir() if p.is_file()) == ["model.onnx"]


def test_missing_weights_rejected(tmp_path):
    run = make_run_dir(tmp_path / "run", model="tinysleepnet", weights=False)

    with pytest.raises(SleepnasError, match=r"has no weights\.pt"):
        export_run(run, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_missing_run_dir_rejected(tmp_path):
    with pytest.raises(SleepnasError, match="not found"):
        export_run(tmp_path / "nothing", tmp_path / "model.onnx")


def test_low_opset_rejected(tmp_path):
    run = make_run_dir(tmp_path / "run", model="tinysleepnet")

    with pytest.raises(SleepnasError, match=r"invalid --opset 17: expected 18 to \d+"):
        export_run(run, tmp_path / "model.onnx", opset=17)
    assert not (tmp_path / "model.onnx").exists()


class _ExportTrap(torch.nn.Module):
    """Adds 0.5 to the logits only while being exported, so parity must fail."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        if torch.compiler.is_exporting():
            return logits + 0.5
        return logits


@pytest.mark.slow
def test_parity_failure_names_figures(tmp_path, monkeypatch):
    run = make_run_dir(tmp_path / "run", model="tinysleepnet")
    model, spec, config = build_model(run)
    monkeypatch.setattr(onnx_export, "_load_run_model", lambda run_dir: (_ExportTrap(model), spec, config))

    with pytest.raises(SleepnasError, match=r"parity check failed .* largest logit difference 0\.5 "
                                            r"\(tolerance 0\.0001\), equal predicted stages 100\.00%"):
        export_run(run, tmp_path / "model.onnx", parity_windows=8, simplify=False)
    assert list(tmp_path.glob("*.onnx*")) == []


@pytest.mark.slow
def test_bad_simplification_falls_back(tmp_path, monkeypatch):
    run = make_run_dir(tmp_path / "run", model="tinysleepnet")

    def scale_weights(proto):
        broken = onnx.ModelProto()
        broken.CopyFrom(proto)
        for tensor in broken.graph.initializer:
            if tensor.data_type == onnx.TensorProto.FLOAT:
                values = onnx.numpy_helper.to_array(tensor) * 1.5
                tensor.CopyFrom(onnx.numpy_helper.from_array(values, tensor.name))
        return broken

    monkeypatch.setattr(onnx_export, "simplify_onnx", scale_weights)
    report = export_run(run, tmp_path / "model.onnx", parity_windows=8)

    assert not report.simplified
    assert report.parity.passed


@pytest.mark.slow
def test_parity_report_fields():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 3000, 5)).eval()
    spec = TINY_SPEC
    windows = random_windows(spec, 4, seed=1)
    proto = onnx_export.export_onnx(model, spec)
    sample = WindowSample(windows=windows, labels=None, source="random: test")

    report = check_parity(model, proto.SerializeToString(), sample, tolerance=1e-4)

    assert report.passed
    assert report.n_windows == 4
    assert report.stage_agreement == 1.0
    assert report.max_abs_diff < 1e-5
    assert report.to_dict()["passed"] is True


def test_sample_windows_random_fallback(tmp_path):
    run = make_run_dir(tmp_path / "run", model="tinysleepnet", data_path=str(tmp_path / "moved"))

    sample = sample_windows(run, TINY_SPEC, n_windows=5, seed=3)

    assert sample.windows.shape == (5, 2, 3000)
    assert sample.windows.dtype == np.float32
    assert sample.labels is None
    assert sample.source.startswith("random: 5 seeded normalized windows")
    assert "moved not found" in sample.source
    assert np.abs(sample.windows).max() <= TINY_SPEC.clip
    np.testing.assert_array_equal(sample.windows, random_windows(TINY_SPEC, 5, seed=3))


def test_missing_data_path_rejected(tmp_path):
    with pytest.raises(SleepnasError, match=r"--data-path .*absent not found"):
        sample_windows(tmp_path, TINY_SPEC, n_windows=5, data_path=tmp_path / "absent")


@pytest.mark.slow
def test_parity_on_data_set_windows(tmp_path, monkeypatch):
    synth = pytest.importorskip("sleepnas.tools.synth")
    monkeypatch.setenv("SLEEPNAS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    synth.synthesize_cohort(data, subjects=3, nights=1, seed=0, hours=1.0)
    run = make_run_dir(tmp_path / "run", model="tinysleepnet", data_path=str(data),
                       split={"train": ["SC400"], "val": ["SC401"], "test": ["SC402"]})

    report = export_run(run, tmp_path / "model.onnx", parity_windows=12)
    sample = sample_windows(run, TINY_SPEC, n_windows=12)

    assert report.parity.passed
    assert report.parity.source.startswith(f"data set: 12 windows of the test subjects in {data}")
    assert sample.labels is not None
    assert sample.labels.shape == (12,)
    assert sample.windows.shape == (12, 2, 3000)
