"""Hypnogram files, sleep statistics, agreement with a reference, and privacy."""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging

import mne
import numpy as np
import pytest

from sleepnas.runtime import hypnogram as hyp
from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.recordings import read_stages
from sleepnas.runtime.scoring import ScoreResult, score_recording
from sleepnas.runtime.stages import AASM5, RK7
from tests.runtime.conftest import CHANNELS, varying_signal
from tests.sleepmodels import write_hypnogram

W, N1, N2, N3, REM = range(5)


def _result(labels, scheme=AASM5, name="night"):
    labels = np.asarray(labels, dtype=np.int64)
    proba = np.full((len(labels), scheme.n_classes), 0.01, dtype=np.float32)
    proba[np.arange(len(labels)), labels] = 1.0 - 0.01 * (scheme.n_classes - 1)
    return ScoreResult(name=name, stage_names=scheme.stage_names, scheme=scheme.name, window_s=30.0,
                       onsets_s=np.arange(len(labels)) * 30.0, labels=labels, proba=proba,
                       flags=[""] * len(labels), recording_s=len(labels) * 30.0)


NIGHT = [W, W, N1, N2, N2, W, N2, N3, REM, REM, W, W]


# ---------------------------------------------------------------- files

def test_csv_has_columns_and_rows(tmp_path):
    result = _result(NIGHT)
    result.flags[3] = "NaN in EEG Fpz-Cz, EMG submental"
    rows = list(csv.DictReader(hyp.hypnogram_csv(result).splitlines()))

    assert list(rows[0]) == ["onset_s", "duration_s", "stage", "p_W", "p_N1", "p_N2", "p_N3",
                             "p_REM", "flag"]
    assert len(rows) == 12
    assert [r["stage"] for r in rows] == ["W", "W", "N1", "N2", "N2", "W", "N2", "N3", "REM", "REM",
                                          "W", "W"]
    assert [float(r["onset_s"]) for r in rows] == [30.0 * i for i in range(12)]
    assert {r["duration_s"] for r in rows} == {"30"}
    assert float(rows[2]["p_N1"]) == pytest.approx(0.96)
    assert rows[3]["flag"] == "NaN in EEG Fpz-Cz, EMG submental"
    assert rows[4]["flag"] == ""


def test_edf_round_trips_through_mne(tmp_path):
    path = tmp_path / "night-Hypnogram.edf"
    path.write_bytes(hyp.hypnogram_edf(_result(NIGHT)))
    annotations = mne.read_annotations(path)

    assert list(annotations.description) == ["Sleep stage W", "Sleep stage 1", "Sleep stage 2",
                                             "Sleep stage W", "Sleep stage 2", "Sleep stage 3",
                                             "Sleep stage R", "Sleep stage W"]
    np.testing.assert_allclose(annotations.onset, [0, 60, 90, 150, 180, 210, 240, 300])
    np.testing.assert_allclose(annotations.duration, [60, 30, 60, 30, 30, 30, 60, 60])


def test_edf_read_back_gives_same_hypnogram(tmp_path):
    result = _result(NIGHT)
    path = tmp_path / "night-Hypnogram.edf"
    path.write_bytes(hyp.hypnogram_edf(result))
    np.testing.assert_array_equal(hyp.reference_labels(read_stages(path), result), NIGHT)


def test_edf_uses_rk_texts_for_rk7(tmp_path):
    labels = [0, 1, 2, 3, 4, 4, 5, 6]
    path = tmp_path / "rk-Hypnogram.edf"
    path.write_bytes(hyp.hypnogram_edf(_result(labels, scheme=RK7)))
    annotations = mne.read_annotations(path)
    assert list(annotations.description) == ["Sleep stage W", "Sleep stage 1", "Sleep stage 2",
                                             "Sleep stage 3", "Sleep stage 4", "Sleep stage R",
                                             "Movement time"]
    np.testing.assert_allclose(annotations.duration, [30, 30, 30, 30, 60, 30, 30])


def test_png_is_drawn():
    assert hyp.hypnogram_png(_result(NIGHT)).startswith(b"\x89PNG")


def test_outputs_written_together(tmp_path):
    result = _result(NIGHT)
    summary = hyp.build_summary(result, model_name="m.onnx")
    paths = hyp.write_outputs(result, tmp_path / "out", summary, plot=True)

    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "night-Hypnogram.edf", "night.hypnogram.csv", "night.png", "night.summary.json"]
    assert json.loads(paths["summary"].read_text())["tst_min"] == 3.5


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hyp, "atomic_write_json", fail)
    with pytest.raises(OSError):
        hyp.write_outputs(_result(NIGHT), tmp_path, {"x": 1})
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_dir_rejected(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(SleepnasError, match=r"cannot write to output directory .*file\.txt/out"):
        hyp.check_output_dir(blocker / "out")


# ---------------------------------------------------------------- statistics

def test_statistics_match_hand_computation():
    stats = hyp.sleep_statistics(NIGHT, AASM5.stage_names, 30.0)

    assert stats["tib_min"] == 6.0
    assert stats["tst_min"] == 3.5
    assert stats["sleep_efficiency"] == pytest.approx(100 * 3.5 / 6.0)
    assert stats["sol_min"] == 1.0
    assert stats["waso_min"] == 1.5
    assert stats["rem_latency_min"] == 3.0
    assert stats["stage_min"] == {"W": 2.5, "N1": 0.5, "N2": 1.5, "N3": 0.5, "REM": 1.0}
    assert stats["stage_pct"]["W"] is None
    assert stats["stage_pct"]["N2"] == pytest.approx(100 * 1.5 / 3.5)
    assert stats["stage_pct"]["REM"] == pytest.approx(100 * 1.0 / 3.5)
    assert stats["n_awakenings"] == 1


def test_statistics_between_lights():
    stats = hyp.sleep_statistics(NIGHT, AASM5.stage_names, 30.0, lights_off_s=60.0, lights_on_s=300.0)

    assert stats["tib_min"] == 4.0
    assert stats["tst_min"] == 3.5
    assert stats["sleep_efficiency"] == pytest.approx(87.5)
    assert stats["sol_min"] == 0.0
    assert stats["waso_min"] == 0.5
    assert stats["rem_latency_min"] == 3.0
    assert stats["stage_min"]["W"] == 0.5


def test_statistics_without_sleep():
    stats = hyp.sleep_statistics([W, W, W], AASM5.stage_names, 30.0)
    assert stats["tst_min"] == 0.0
    assert stats["sleep_efficiency"] == 0.0
    assert stats["sol_min"] is None
    assert stats["waso_min"] is None
    assert stats["rem_latency_min"] is None
    assert set(stats["stage_pct"].values()) == {None}


def test_statistics_movement_time_not_sleep():
    stats = hyp.sleep_statistics([0, 2, 6, 2, 0], RK7.stage_names, 30.0)
    assert stats["tst_min"] == 1.0
    assert stats["stage_min"]["MT"] == 0.5
    assert stats["n_awakenings"] == 0


def test_lights_on_before_off_rejected():
    with pytest.raises(SleepnasError, match="lights on .* is not after lights off"):
        hyp.sleep_statistics(NIGHT, AASM5.stage_names, 30.0, lights_off_s=200.0, lights_on_s=100.0)
    with pytest.raises(SleepnasError, match="after the end of the scored recording"):
        hyp.sleep_statistics(NIGHT, AASM5.stage_names, 30.0, lights_off_s=4000.0)


@pytest.mark.parametrize("text, parsed", [("23:15", ("clock", 83700.0)), ("7:05:30", ("clock", 25530.0)),
                                          ("1800", ("offset", 1800.0)), ("90.5", ("offset", 90.5))])
def test_lights_parsed(text, parsed):
    assert hyp.parse_lights(text, "--lights-off") == parsed


@pytest.mark.parametrize("text", ["25:00", "11:75", "-30", "soon", "nan", ""])
def test_invalid_lights_rejected(text):
    with pytest.raises(SleepnasError, match=r"invalid --lights-on .*HH:MM\[:SS\]"):
        hyp.parse_lights(text, "--lights-on")


def test_clock_lights_counted_from_start():
    start = 22 * 3600 + 30 * 60
    assert hyp.lights_offset_s(("clock", 23 * 3600), start) == 1800.0
    assert hyp.lights_offset_s(("clock", 7 * 3600), start) == 30600.0
    assert hyp.lights_offset_s(("offset", 12.0), None) == 12.0
    with pytest.raises(SleepnasError, match="start time"):
        hyp.lights_offset_s(("clock", 3600.0), None)


# ---------------------------------------------------------------- agreement

REFERENCE = [(0, 60, "Sleep stage W"), (60, 30, "Sleep stage 1"), (90, 60, "Sleep stage 2"),
             (150, 30, "Sleep stage ?"), (180, 30, "Sleep stage 3"), (210, 30, "Sleep stage 4"),
             (240, 60, "Sleep stage R"), (300, 30, "Movement time")]
PREDICTED = [W, N1, N1, N2, N3, W, N3, N2, REM, W, W]


def test_reference_labels_drop_unscored_and_movement(tmp_path):
    path = write_hypnogram(tmp_path / "ref.edf", REFERENCE)
    labels = hyp.reference_labels(read_stages(path), _result(PREDICTED + [W]))
    np.testing.assert_array_equal(labels, [W, W, N1, N2, N2, -1, N3, N3, REM, REM, -1, -1])


def test_agreement_matches_hand_computation(tmp_path):
    path = write_hypnogram(tmp_path / "ref.edf", REFERENCE)
    metrics = hyp.reference_agreement(_result(PREDICTED), path)

    # Compared windows: 0-4 and 6-9 (window 5 is unscored, window 10 movement time).
    assert metrics["n_windows"] == 9
    assert metrics["accuracy"] == pytest.approx(5 / 9)
    assert metrics["per_stage_f1"] == pytest.approx({"W": 0.5, "N1": 2 / 3, "N2": 0.5, "N3": 0.5,
                                                     "REM": 2 / 3})
    assert metrics["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.5 + 0.5 + 2 / 3) / 5)
    # p_o = 5/9; p_e = (2*2 + 1*2 + 2*2 + 2*2 + 2*1) / 81 = 16/81.
    assert metrics["kappa"] == pytest.approx(29 / 65)
    assert metrics["confusion"] == [[1, 1, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 1, 0],
                                    [0, 0, 1, 1, 0], [1, 0, 0, 0, 1]]
    assert metrics["reference"] == "ref.edf"


def test_agreement_formatted_for_print(tmp_path):
    path = write_hypnogram(tmp_path / "ref.edf", REFERENCE)
    text = hyp.format_agreement(hyp.reference_agreement(_result(PREDICTED), path), AASM5.stage_names)
    assert "accuracy 0.556, macro-F1 0.567, kappa 0.446" in text
    assert "N1 0.667" in text
    assert "   REM      1      0      0      0      1" in text


def test_reference_beyond_recording_gives_none(tmp_path, caplog):
    path = write_hypnogram(tmp_path / "late.edf", [(9000, 60, "Sleep stage W")])
    with caplog.at_level(logging.WARNING):
        assert hyp.reference_agreement(_result(NIGHT), path) is None
    assert "covers no scored window" in caplog.text


def test_reference_found_by_first_six_characters(tmp_path):
    psg = tmp_path / "SC4001E0-PSG.edf"
    psg.write_bytes(b"")
    assert hyp.find_reference(psg) is None
    (tmp_path / "SC4002EC-Hypnogram.edf").write_bytes(b"")
    assert hyp.find_reference(psg) is None
    (tmp_path / "SC4001EC-Hypnogram.edf").write_bytes(b"")
    assert hyp.find_reference(psg).name == "SC4001EC-Hypnogram.edf"

    # A hypnogram this tool wrote earlier beside the PSG is not a second reference.
    (tmp_path / "SC4001E0-PSG-Hypnogram.edf").write_bytes(b"")
    found = hyp.find_reference(psg, exclude=["SC4001E0-PSG-Hypnogram.edf"])
    assert found.name == "SC4001EC-Hypnogram.edf"
    with pytest.raises(SleepnasError, match="several reference hypnograms.*--reference"):
        hyp.find_reference(psg)


def test_generic_sidecar_found(tmp_path):
    psg = tmp_path / "n1.edf"
    psg.write_bytes(b"")
    (tmp_path / "n1-Hypnogram.edf").write_bytes(b"")
    assert hyp.find_reference(psg).name == "n1-Hypnogram.edf"


# ---------------------------------------------------------------- end to end and privacy

def _identified_psg(path):
    from edfio import Edf, EdfSignal, Patient, Recording

    data = varying_signal(8 * 3000, seed=11)
    signals = [EdfSignal(row, sampling_frequency=100.0, label=label, physical_dimension="uV",
                         physical_range=(float(row.min()), float(row.max())))
               for row, label in zip(data, CHANNELS)]
    Edf(signals, patient=Patient(code="MRN-778899", name="Haagse_Harry", sex="M",
                                 birthdate=dt.date(1951, 2, 3)),
        recording=Recording(startdate=dt.date(2023, 3, 17), hospital_administration_code="SECRETSTUDY",
                            investigator_technician_code="Dr_Jansen", equipment_code="Box99"),
        starttime=dt.time(22, 30, 0)).write(path)
    return path


def test_score_to_files_writes_all(linear_model, psg_path):
    write_hypnogram(psg_path.parent / "night-Hypnogram.edf",
                    [(0, 300, "Sleep stage W"), (300, 330, "Sleep stage 2")])
    result, summary, paths = hyp.score_to_files(linear_model, psg_path, psg_path.parent / "out",
                                                plot=True, lights_off=("offset", 30.0))
    assert all(p.is_file() for p in paths.values())
    assert summary["agreement"]["reference"] == "night-Hypnogram.edf"
    assert summary["agreement"]["n_windows"] == 21
    assert summary["lights_off_s"] == 30.0
    assert summary["tib_min"] == pytest.approx(10.0)
    for key in ("tib_min", "tst_min", "sleep_efficiency", "sol_min", "waso_min", "rem_latency_min",
                "stage_min", "stage_pct", "n_awakenings"):
        assert key in summary
    np.testing.assert_array_equal(result.labels, score_recording(linear_model, psg_path).labels)


def test_output_over_input_rejected(linear_model, tmp_path):
    psg = _identified_psg(tmp_path / "rec.edf")
    reference = write_hypnogram(tmp_path / "rec-Hypnogram.edf", [(0, 240, "Sleep stage W")])
    with pytest.raises(SleepnasError, match="would overwrite an input file"):
        hyp.score_to_files(linear_model, psg, tmp_path, reference=reference)
    assert not (tmp_path / "rec.hypnogram.csv").exists()


def test_clock_lights_use_edf_start_time(linear_model, tmp_path):
    psg = _identified_psg(tmp_path / "rec.edf")
    _, summary, _ = hyp.score_to_files(linear_model, psg, tmp_path / "out", reference=False,
                                       lights_off=("clock", 22 * 3600 + 31 * 60),
                                       lights_on=("clock", 22 * 3600 + 34 * 60))
    assert summary["lights_off_s"] == 60.0
    assert summary["lights_on_s"] == 240.0
    assert summary["tib_min"] == 3.0


def test_no_header_identity_in_outputs_or_logs(linear_model, tmp_path, caplog):
    psg = _identified_psg(tmp_path / "rec.edf")
    with caplog.at_level(logging.DEBUG, logger="sleepnas"):
        _, _, paths = hyp.score_to_files(linear_model, psg, tmp_path / "out", plot=True,
                                         lights_off=("clock", 22 * 3600 + 31 * 60))
    secrets = [b"MRN-778899", b"Haagse", b"Harry", b"SECRETSTUDY", b"Jansen", b"Box99", b"1951",
               b"2023", b"17.03.23", b"17-MAR", b"22.30.00", b"22:30"]
    for path in paths.values():
        content = path.read_bytes()
        for secret in secrets:
            assert secret not in content, f"{secret!r} found in {path.name}"
    for secret in secrets:
        assert secret.decode() not in caplog.text
