"""``sleepnas score``: files, many recordings, bad input, streaming, and no torch."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sleepnas.runtime.model import load_model
from sleepnas.runtime.scoring import score_recording
from tests.clitools import run_cli
from tests.sleepmodels import build_linear_model, small_spec, write_hypnogram, write_psg

REPO = Path(__file__).resolve().parents[2]
CHANNELS = ("EEG Fpz-Cz", "EMG submental")


def _signal(n_samples, seed):
    rng = np.random.default_rng(seed)
    amplitude = np.repeat(rng.uniform(5.0, 60.0, size=(2, n_samples // 3000 + 1)), 3000, axis=1)
    return rng.normal(0.0, 1.0, size=(2, n_samples)) * amplitude[:, :n_samples]


@pytest.fixture
def model_path(tmp_path):
    spec = small_spec(CHANNELS, scale=(2e-5, 1e-5))
    return build_linear_model(tmp_path / "model.onnx", spec)


@pytest.fixture
def recordings(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    paths = []
    for k, name in enumerate(["SC4001E0-PSG.edf", "SC4011E0-PSG.edf"]):
        paths.append(write_psg(folder / name, dict(zip(CHANNELS, _signal(16 * 3000, seed=k)))))
    write_hypnogram(folder / "SC4001EC-Hypnogram.edf",
                    [(0, 120, "Sleep stage W"), (120, 240, "Sleep stage 2"), (360, 120, "Sleep stage R")])
    return paths


def test_score_writes_files(model_path, recordings, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["-q", "score", str(model_path), *map(str, recordings), "-o", str(out),
                                    "--plot", "--threads", "1", "--batch-size", "5"])
    assert code == 0, stderr
    names = sorted(p.name for p in out.iterdir())
    for stem in ("SC4001E0-PSG", "SC4011E0-PSG"):
        for suffix in (".hypnogram.csv", "-Hypnogram.edf", ".summary.json", ".png"):
            assert stem + suffix in names

    rows = list(csv.DictReader((out / "SC4001E0-PSG.hypnogram.csv").open()))
    assert len(rows) == 16
    expected = score_recording(load_model(model_path), recordings[0]).stages
    assert [r["stage"] for r in rows] == expected

    summary = json.loads((out / "SC4001E0-PSG.summary.json").read_text())
    assert summary["agreement"]["reference"] == "SC4001EC-Hypnogram.edf"
    assert summary["agreement"]["n_windows"] == 16
    assert "agreement" not in json.loads((out / "SC4011E0-PSG.summary.json").read_text())
    assert "agreement with SC4001EC-Hypnogram.edf over 16 windows" in stdout
    assert "SC4011E0-PSG: 16 windows" in stdout


def test_given_reference_and_lights(model_path, recordings, tmp_path):
    reference = write_hypnogram(tmp_path / "other.edf", [(0, 480, "Sleep stage 2")])
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["score", str(model_path), str(recordings[1]), "-o", str(out),
                                    "--reference", str(reference), "--lights-off", "60",
                                    "--lights-on", "420"])
    assert code == 0, stderr
    summary = json.loads((out / "SC4011E0-PSG.summary.json").read_text())
    assert summary["agreement"]["reference"] == "other.edf"
    assert summary["tib_min"] == 6.0


def test_one_failure_does_not_stop_others(model_path, recordings, tmp_path):
    truncated = tmp_path / "data" / "SC4021E0-PSG.edf"
    truncated.write_bytes(recordings[1].read_bytes()[:-3000])
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["score", str(model_path), str(recordings[0]), str(truncated),
                                    str(recordings[1]), "-o", str(out)])
    assert code == 1
    assert "Error: 1 of 3 recordings failed: SC4021E0-PSG.edf" in stderr
    assert "SC4021E0-PSG.edf failed:" in stderr
    assert (out / "SC4001E0-PSG.hypnogram.csv").is_file()
    assert (out / "SC4011E0-PSG.hypnogram.csv").is_file()
    assert not list(out.glob("SC4021E0*"))


@pytest.mark.parametrize("case, message", [
    ("not_sleepnas", "not a sleepnas model: metadata key 'sleepnas.window_spec' is missing"),
    ("corrupt", "not a valid ONNX file"),
    ("short", "is shorter than one window: 2000 samples"),
    ("unwritable", "cannot write to output directory"),
    ("provider", "execution provider 'tpu' is not available"),
    ("lights", "invalid --lights-off '25:99'"),
    ("no_output", "missing -o/--output-dir"),
])
def test_bad_input_one_line(model_path, recordings, tmp_path, case, message):
    model, recording, out = model_path, recordings[0], tmp_path / "out"
    extra: list[str] = []
    if case == "not_sleepnas":
        model = build_linear_model(tmp_path / "plain.onnx", small_spec(CHANNELS),
                                   drop_keys=["sleepnas.window_spec"])
    elif case == "corrupt":
        model = tmp_path / "corrupt.onnx"
        model.write_bytes(model_path.read_bytes()[:100])
    elif case == "short":
        recording = write_psg(tmp_path / "short.edf", dict(zip(CHANNELS, _signal(2000, seed=3))))
    elif case == "unwritable":
        (tmp_path / "blocker").write_text("x")
        out = tmp_path / "blocker" / "out"
    elif case == "provider":
        extra = ["--provider", "tpu"]
    elif case == "lights":
        extra = ["--lights-off", "25:99"]
    args = ["-q", "score", str(model), str(recording), *extra]
    if case != "no_output":
        args += ["-o", str(out)]

    code, stdout, stderr = run_cli(args)
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: ")
    assert message in lines[0]
    if case == "short":
        assert not out.exists()
    else:
        assert not out.exists()


def _run_stream(model_path, payload: bytes):
    code = "from sleepnas.tools.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, "score", str(model_path), "--stream"],
                          input=payload, capture_output=True, cwd=REPO, timeout=120)


def test_stream_prints_batch_hypnogram(model_path, recordings):
    from sleepnas.runtime.recordings import read_signals

    data, _ = read_signals(recordings[0], CHANNELS)
    frames = np.ascontiguousarray(data[:, :16 * 3000 - 1234].T).astype("<f4")
    process = _run_stream(model_path, frames.tobytes())

    assert process.returncode == 0, process.stderr.decode()
    rows = list(csv.DictReader(process.stdout.decode().splitlines()))
    batch = score_recording(load_model(model_path), recordings[0])
    assert [r["stage"] for r in rows] == batch.stages[:15]
    assert [float(r["onset_s"]) for r in rows] == [30.0 * i for i in range(15)]
    np.testing.assert_allclose([float(r["p_N2"]) for r in rows], batch.proba[:15, 2], atol=2e-6)
    stderr = process.stderr.decode().strip().splitlines()
    assert stderr == ["stream ended mid-window: scored 15 windows; 1766 samples per channel "
                      "(17.66 s) after the last whole window were not scored"]


def test_stream_with_file_options_rejected(model_path, recordings, tmp_path):
    code, _, stderr = run_cli(["score", str(model_path), "--stream", "-o", str(tmp_path), "--plot"])
    assert code == 1
    assert "Error: -o/--output-dir, --plot cannot be used with --stream" in stderr
    code, _, stderr = run_cli(["score", str(model_path), "--stream", str(recordings[0])])
    assert code == 1
    assert "give no recording files" in stderr


def test_stream_flags_nan_run(model_path):
    frames = (np.random.default_rng(2).normal(0.0, 2e-5, size=(6000, 2))).astype("<f4")
    frames[3100:3400, 1] = np.nan
    process = _run_stream(model_path, frames.tobytes())
    assert process.returncode == 0, process.stderr.decode()
    rows = list(csv.DictReader(process.stdout.decode().splitlines()))
    assert [r["flag"] for r in rows] == ["", "NaN in EMG submental"]
    assert process.stderr.decode() == ""


def test_stream_ending_inside_frame_fails(model_path):
    frames = np.zeros((3000, 2), "<f4")
    frames[:, 0] = np.sin(np.arange(3000))
    payload = frames.tobytes() + b"\x00\x01\x02"
    process = _run_stream(model_path, payload)
    assert process.returncode == 1
    assert len(process.stdout.decode().strip().splitlines()) == 2
    assert "stream ended inside a frame: 3 bytes of an incomplete frame dropped" in process.stderr.decode()


def test_score_runs_without_torch(model_path, recordings, tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import sys

        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is hidden for this test")
                return None

        sys.meta_path.insert(0, BlockTorch())
        from sleepnas.tools.cli import main
        try:
            main(["score", {str(model_path)!r}, {str(recordings[0])!r}, "-o", {str(out)!r}, "--plot"])
        except SystemExit as exc:
            assert not exc.code, exc.code
        assert "torch" not in sys.modules
        print("scored without torch")
    """)
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, cwd=REPO,
                             timeout=180)
    assert process.returncode == 0, process.stderr.decode()
    assert "scored without torch" in process.stdout.decode()
    assert (out / "SC4001E0-PSG.summary.json").is_file()


@pytest.mark.slow
def test_synthetic_night_scored(tmp_path):
    import mne

    from sleepnas.runtime.recordings import read_signals
    from sleepnas.runtime.spec import WindowSpec

    synth = pytest.importorskip("sleepnas.tools.synth")
    psg, hypnogram = synth.synthesize_cohort(tmp_path / "data", subjects=1, nights=1, seed=0, hours=1.0)
    data, _ = read_signals(psg, WindowSpec().channels)
    n = data.shape[1] // 3000
    spec = WindowSpec().fit_scale(data[:, :n * 3000].reshape(7, n, 3000).transpose(1, 0, 2))
    model = build_linear_model(tmp_path / "cassette.onnx", spec)

    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["-q", "score", str(model), str(psg), "-o", str(out)])
    assert code == 0, stderr

    rows = list(csv.DictReader((out / "SC4001E0-PSG.hypnogram.csv").open()))
    assert list(rows[0]) == ["onset_s", "duration_s", "stage", "p_W", "p_N1", "p_N2", "p_N3",
                             "p_REM", "flag"]
    assert len(rows) == n == 120
    summary = json.loads((out / "SC4001E0-PSG.summary.json").read_text())
    assert summary["agreement"]["reference"] == hypnogram.name
    assert sum(summary["stage_min"].values()) == pytest.approx(60.0)
    assert summary["tst_min"] + summary["stage_min"]["W"] == pytest.approx(60.0)

    annotations = mne.read_annotations(out / "SC4001E0-PSG-Hypnogram.edf")
    texts = {"W": "Sleep stage W", "N1": "Sleep stage 1", "N2": "Sleep stage 2", "N3": "Sleep stage 3",
             "REM": "Sleep stage R"}
    expanded = []
    for onset, duration, text in zip(annotations.onset, annotations.duration, annotations.description):
        assert onset == pytest.approx(30.0 * len(expanded))
        expanded.extend([text] * int(round(duration / 30.0)))
    assert expanded == [texts[r["stage"]] for r in rows]
