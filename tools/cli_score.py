"""``sleepnas score``: score recordings with an ONNX model and write their hypnograms.

Runs with the base install (numpy, onnxruntime, mne, edfio); it never imports torch.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from sleepnas.runtime.errors import SleepnasError

logger = logging.getLogger(__name__)

# Bytes read from standard input per call in --stream mode.
_STREAM_READ_BYTES = 1 << 16


@click.command()
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("recordings", metavar="[REC.edf]...", nargs=-1,
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for <name>.hypnogram.csv, <name>-Hypnogram.edf, <name>.summary.json "
                   "(and <name>.png); created if missing. Required unless --stream.")
@click.option("--plot", is_flag=True, help="Also draw <name>.png: the hypnogram above the hypnodensity.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="onnxruntime intra-op threads [default: onnxruntime's choice].")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Windows per onnxruntime call.")
@click.option("--provider", default="cpu", show_default=True,
              help="onnxruntime execution provider by name, e.g. cpu or CUDAExecutionProvider.")
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Reference hypnogram to compare with (one recording only) [default: a "
                   "hypnogram beside the PSG with the same first six characters, if any].")
@click.option("--no-reference", is_flag=True, help="Do not look for a reference hypnogram.")
@click.option("--lights-off", default=None,
              help="Start of the time in bed: clock time HH:MM[:SS] or seconds from the first "
                   "sample [default: the start of the recording].")
@click.option("--lights-on", default=None,
              help="End of the time in bed: clock time HH:MM[:SS] or seconds from the first "
                   "sample [default: the end of the last whole window].")
@click.option("--stream", is_flag=True,
              help="Read little-endian float32 frames from standard input (channels "
                   "interleaved, in the model's channel order and rate, in volts as sleepnas "
                   "reads EDF signals) and print one CSV line per window. Samples after the last "
                   "whole window are reported on standard error.")
def score(model_path: Path, recordings: tuple[Path, ...], output_dir: Path | None, plot: bool,
          threads: int | None, batch_size: int, provider: str, reference: Path | None,
          no_reference: bool, lights_off: str | None, lights_on: str | None, stream: bool) -> None:
    """Score recordings with MODEL.onnx and write a hypnogram per recording.

    Each recording gets a CSV hypnogram with the stage probabilities, an EDF+ hypnogram
    with Sleep-EDF annotation texts and a JSON summary of sleep statistics, plus the
    agreement with a reference hypnogram when one is found or given. One failed
    recording does not stop the others; the exit status is 1 if any failed.
    """
    from sleepnas.runtime.model import load_model

    if stream:
        if recordings:
            raise SleepnasError("--stream reads samples from standard input: give no recording files")
        file_options = {"-o/--output-dir": output_dir, "--plot": plot, "--reference": reference,
                        "--lights-off": lights_off, "--lights-on": lights_on}
        used = [name for name, value in file_options.items() if value]
        if used:
            raise SleepnasError(f"{', '.join(used)} cannot be used with --stream, which prints one "
                                f"line per window to standard output and writes no files")
        model = load_model(model_path, threads=threads, providers=provider)
        _score_stream(model, batch_size)
        return

    _check_score_options(recordings, output_dir, reference, no_reference)
    from sleepnas.runtime.hypnogram import check_output_dir, parse_lights

    lights = (None if lights_off is None else parse_lights(lights_off, "--lights-off"),
              None if lights_on is None else parse_lights(lights_on, "--lights-on"))
    model = load_model(model_path, threads=threads, providers=provider)
    created = not output_dir.exists()
    check_output_dir(output_dir)
    logger.debug("model %s: %s, channels %s", model.path.name, model.spec.scheme,
                ", ".join(model.spec.channels))
    try:
        _score_files(model, recordings, output_dir, batch_size=batch_size, plot=plot,
                     reference=False if no_reference else reference, lights=lights)
    finally:
        # A folder this command made and left empty (every recording failed) is removed.
        if created and output_dir.is_dir() and not any(output_dir.iterdir()):
            output_dir.rmdir()


def _check_score_options(recordings, output_dir, reference, no_reference) -> None:
    if not recordings:
        raise SleepnasError("no recording given: pass one or more EDF files after MODEL.onnx, "
                            "or --stream")
    if output_dir is None:
        raise SleepnasError("missing -o/--output-dir: name the folder for the hypnogram files")
    if reference is not None and len(recordings) > 1:
        raise SleepnasError(f"--reference names one hypnogram but {len(recordings)} recordings "
                            f"were given: score them one at a time, or let references be found")
    if reference is not None and no_reference:
        raise SleepnasError("--reference and --no-reference conflict: give one of them")


def _score_files(model, recordings, output_dir: Path, *, batch_size: int, plot: bool,
                 reference, lights) -> None:
    from sleepnas.runtime.hypnogram import format_agreement, score_to_files
    from sleepnas.runtime.utils import progress

    failures: list[tuple[Path, Exception]] = []
    for psg in progress(recordings, desc="scoring", total=len(recordings), unit="recording"):
        try:
            result, summary, paths = score_to_files(
                model, psg, output_dir, batch_size=batch_size, plot=plot, reference=reference,
                lights_off=lights[0], lights_on=lights[1])
        except (SleepnasError, OSError) as err:
            if len(recordings) > 1:
                logger.error("%s failed: %s", psg.name, _one_line(err))
            failures.append((psg, err))
            continue
        click.echo(_result_line(result, summary, paths))
        if "agreement" in summary:
            click.echo(format_agreement(summary["agreement"], result.stage_names))

    if not failures:
        return
    if len(recordings) == 1:
        raise SleepnasError(_one_line(failures[0][1]))
    names = ", ".join(psg.name for psg, _ in failures)
    raise SleepnasError(f"{len(failures)} of {len(recordings)} recordings failed: {names} "
                        f"(reasons above)")


def _one_line(err: Exception) -> str:
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _result_line(result, summary: dict, paths: dict) -> str:
    flagged = f", {result.n_flagged} flagged" if result.n_flagged else ""
    return (f"{result.name}: {result.n_windows} windows{flagged}; TST {summary['tst_min']:.1f} min, "
            f"sleep efficiency {summary['sleep_efficiency']:.1f} %; wrote "
            f"{', '.join(str(p) for p in paths.values())}")


def _score_stream(model, batch_size: int) -> None:
    import numpy as np

    from sleepnas.runtime.hypnogram import csv_header, csv_line, csv_row
    from sleepnas.runtime.scoring import Scorer

    spec = model.spec
    scorer = Scorer(model, batch_size=batch_size)
    frame_bytes = 4 * spec.n_chans
    stdin = click.get_binary_stream("stdin")
    read = getattr(stdin, "read1", stdin.read)

    click.echo(csv_line(csv_header(spec.stage_names)))
    carry = b""
    while True:
        chunk = read(_STREAM_READ_BYTES)
        if not chunk:
            break
        data = carry + chunk
        n_frames = len(data) // frame_bytes
        carry = data[n_frames * frame_bytes:]
        frames = np.frombuffer(data[:n_frames * frame_bytes], dtype="<f4")
        for window in scorer.push(frames.reshape(n_frames, spec.n_chans).T):
            click.echo(csv_line(csv_row(window.onset_s, spec.window_s, window.stage,
                                        window.probabilities, window.flag)))
        sys.stdout.flush()

    leftover = scorer.flush()
    if carry:
        raise SleepnasError(
            f"stream ended inside a frame: {len(carry)} bytes of an incomplete frame dropped "
            f"(a frame is {frame_bytes} bytes: {spec.n_chans} float32 samples); scored "
            f"{scorer.n_windows} windows, {leftover} samples per channel left over"
        )
    if leftover:
        click.echo(f"stream ended mid-window: scored {scorer.n_windows} windows; {leftover} "
                   f"samples per channel ({leftover / spec.sfreq:g} s) after the last whole window "
                   f"were not scored", err=True)
