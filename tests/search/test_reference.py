"""TinySleepNet: shapes, registry errors, ONNX export with a dynamic batch and parity."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sleepnas.runtime.errors import SleepnasError
from sleepnas.search.onnx_io import export_onnx
from sleepnas.search.reference import REFERENCE_MODELS, TinySleepNet, create_reference_model


@pytest.mark.parametrize(("n_chans", "n_times", "n_classes", "steps"),
                         [(7, 3000, 5, 16), (1, 3000, 7, 16), (2, 600, 5, 4)])
def test_tinysleepnet_shapes(n_chans, n_times, n_classes, steps):
    torch.manual_seed(0)
    model = TinySleepNet(n_chans, n_times, n_classes).eval()
    logits = model(torch.randn(3, n_chans, n_times))
    assert logits.shape == (3, n_classes)
    # 3000 samples: ceil(3000 / 6) = 500 steps, pooled by 8 to 63, then by 4 to 16.
    assert model.n_steps == steps
    assert model.features(torch.randn(1, n_chans, n_times)).shape == (1, 128, steps)


def test_tinysleepnet_layers_follow_paper():
    model = TinySleepNet()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d)]
    assert [(c.kernel_size[0], c.stride[0], c.out_channels) for c in convs] == [
        (50, 6, 128), (8, 1, 128), (8, 1, 128), (8, 1, 128)]
    pools = [m.kernel_size for m in model.modules() if isinstance(m, torch.nn.MaxPool1d)]
    assert pools == [8, 4]
    assert model.lstm.hidden_size == 128


def test_tinysleepnet_rejects_short_window():
    with pytest.raises(SleepnasError, match="invalid TinySleepNet n_times 3"):
        TinySleepNet(n_times=3)


def test_registry_unknown_name_lists_known():
    assert REFERENCE_MODELS == {"tinysleepnet": TinySleepNet}
    with pytest.raises(SleepnasError, match="unknown reference model 'deepsleepnet': expected one of 'tinysleepnet'"):
        create_reference_model("deepsleepnet", 7, 3000, 5)


@pytest.mark.slow
def test_tinysleepnet_onnx_parity(tmp_path):
    torch.manual_seed(0)
    model = create_reference_model("tinysleepnet", 7, 3000, 5).eval()
    path = tmp_path / "tiny.onnx"
    export_onnx(model, [torch.zeros(1, 7, 3000)], path, input_names=["windows"],
                output_names=["logits"], dynamic_batch=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"

    # Batch sizes other than the example's prove the batch axis is dynamic.
    for batch in (1, 4):
        x = torch.randn(batch, 7, 3000)
        expected = model(x).detach().numpy()
        got = session.run(["logits"], {"windows": x.numpy()})[0]
        assert got.shape == (batch, 5)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
