"""Stages, schemes, the window spec and the agreement metrics."""

from __future__ import annotations

import numpy as np
import pytest

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.metrics import agreement
from sleepnas.runtime.spec import WindowSpec
from sleepnas.runtime.stages import AASM5, RK7, Stage, annotation_to_stage, resolve_scheme


@pytest.mark.parametrize("text, stage", [
    ("Sleep stage W", Stage.W), ("Sleep stage 4", Stage.S4), ("sleep  stage r", Stage.REM),
    ("Movement time", Stage.MT), ("Sleep stage ?", Stage.UNSCORED), ("N3", Stage.N3),
])
def test_annotation_texts_map_to_stages(text, stage):
    assert annotation_to_stage(text) is stage


def test_unknown_annotation_names_text_and_file():
    with pytest.raises(SleepnasError, match=r"'Lights off'.*night\.edf"):
        annotation_to_stage("Lights off", source="night.edf")


def test_schemes_merge_and_drop():
    assert AASM5.label(Stage.S3) == AASM5.label(Stage.S4) == AASM5.stage_names.index("N3")
    assert AASM5.label(Stage.MT) is None
    assert AASM5.label(Stage.UNSCORED) is None
    assert RK7.label(Stage.MT) == 6
    assert RK7.label(Stage.UNSCORED) is None
    with pytest.raises(SleepnasError, match="N3"):
        RK7.label(Stage.N3)


def test_resolve_scheme_spellings():
    assert resolve_scheme() is AASM5
    assert resolve_scheme(num_classes=7) is RK7
    assert resolve_scheme("rk7", 7) is RK7
    with pytest.raises(SleepnasError, match="conflicts"):
        resolve_scheme("aasm5", 7)
    with pytest.raises(SleepnasError, match="--num-classes"):
        resolve_scheme(num_classes=6)
    with pytest.raises(SleepnasError, match="'aasm5', 'rk7'"):
        resolve_scheme("aasm")


def test_normalize_uses_median_and_scale():
    rng = np.random.default_rng(0)
    windows = rng.normal(5.0, 2.0, size=(50, 2, 300)).astype(np.float32)
    windows[:, 1] = 0.0  # a flat channel gets scale 1
    spec = WindowSpec(channels=("a", "b"), window_s=3.0).fit_scale(windows)
    assert spec.scale[0] == pytest.approx(2.0, rel=0.1)
    assert spec.scale[1] == 1.0
    out = spec.normalize(windows)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.median(out[:, 0], axis=-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out[3], spec.normalize(windows[3]), rtol=0, atol=0)


def test_spec_json_round_trip():
    spec = WindowSpec(scale=tuple(range(1, 8)))
    assert WindowSpec.from_json(spec.to_json()) == spec
    with pytest.raises(SleepnasError, match="unknown keys"):
        WindowSpec.from_dict({**spec.to_dict(), "patient": "x"})


def test_agreement_matches_hand_count():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    result = agreement(y_true, y_pred, ("W", "N1", "N2", "N3", "REM"))
    assert result["accuracy"] == pytest.approx(4 / 6)
    # F1: W 2*1/(2+2)=0.5, N1 2*2/(2+3)=0.8, N2 2*1/(2+1)=2/3; N3 and REM absent.
    assert result["per_stage_f1"]["W"] == pytest.approx(0.5)
    assert result["per_stage_f1"]["N1"] == pytest.approx(0.8)
    assert result["per_stage_f1"]["N3"] is None
    assert result["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # kappa: po = 4/6, pe = (2*2 + 2*3 + 2*1)/36 = 12/36
    assert result["kappa"] == pytest.approx((4 / 6 - 1 / 3) / (1 - 1 / 3))


def test_atomic_write_follows_umask(tmp_path):
    import os

    from sleepnas.runtime.utils import atomic_write_text

    previous = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "out.txt", "x")
    finally:
        os.umask(previous)
    assert path.read_text() == "x"
    assert path.stat().st_mode & 0o777 == 0o644
