"""``sleepnas data``: summarize, cache, download and synthesize recordings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from sleepnas.runtime.spec import CASSETTE_CHANNELS

logger = logging.getLogger(__name__)

_DEFAULT_CHANNELS = ",".join(CASSETTE_CHANNELS)


def _window_options(command):
    """Add the options that choose which windows a data folder gives."""
    options = [
        click.option("--scheme", type=click.Choice(["aasm5", "rk7"]), default=None,
                     help="Stage scheme: aasm5 (W, N1, N2, N3, REM) or rk7 (W, S1-S4, REM, "
                          "MT). Default aasm5."),
        click.option("--num-classes", type=click.Choice(["5", "7"]), default=None,
                     help="Another spelling of --scheme: 5 is aasm5, 7 is rk7."),
        click.option("--channels", default=_DEFAULT_CHANNELS, show_default=True,
                     help="Comma-separated channel names, in model input order."),
        click.option("--trim-wake-min", type=float, default=30.0, show_default=True,
                     help="Minutes of wake kept before the first and after the last sleep "
                          "window."),
        click.option("--no-trim", is_flag=True, help="Keep all windows, without trimming wake."),
        click.option("--on-error", type=click.Choice(["skip", "raise"]), default="skip",
                     show_default=True,
                     help="For a recording that cannot be read: log it and go on, or stop."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _spec_and_trim(scheme, num_classes, channels, trim_wake_min, no_trim):
    from sleepnas.runtime.channels import parse_channels
    from sleepnas.runtime.errors import check_positive
    from sleepnas.runtime.spec import WindowSpec
    from sleepnas.runtime.stages import resolve_scheme

    resolved = resolve_scheme(scheme, None if num_classes is None else int(num_classes))
    spec = WindowSpec(channels=parse_channels(channels), scheme=resolved.name)
    if no_trim:
        return spec, None
    return spec, check_positive("--trim-wake-min", trim_wake_min, allow_zero=True)


@click.group()
def data() -> None:
    """Summarize, cache, download or synthesize recordings."""


@data.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@_window_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(data_dir, scheme, num_classes, channels, trim_wake_min, no_trim, on_error, as_json):
    """Print the recordings, subjects and windows per stage under DATA_DIR.

    Windows are counted after wake trimming, from the hypnograms and the PSG headers,
    without reading the signals.
    """
    from sleepnas.runtime.store import summarize_recordings

    spec, trim = _spec_and_trim(scheme, num_classes, channels, trim_wake_min, no_trim)
    summary = summarize_recordings(data_dir, spec, trim_wake_min=trim, on_error=on_error)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(_format_summary(summary, data_dir, trim))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _format_summary(summary: dict, data_dir: Path, trim_wake_min: float | None) -> str:
    stages = list(summary["windows"])
    trim_text = "all windows" if trim_wake_min is None else \
        f"{trim_wake_min:g} min of wake kept around sleep"
    lines = [f"{_count(summary['recordings'], 'recording')} of "
             f"{_count(summary['subjects'], 'subject')} in {data_dir} "
             f"(scheme {summary['scheme']}, {trim_text})"]
    header = f"{'recording':<12}{'subject':<10}{'night':>5}" + "".join(f"{s:>7}" for s in stages)
    lines.append(header + f"{'total':>8}")
    for item in summary["per_recording"]:
        counts = [item["windows"][s] for s in stages]
        lines.append(f"{item['name']:<12}{item['subject']:<10}{item['night']:>5}"
                     + "".join(f"{c:>7}" for c in counts) + f"{sum(counts):>8}")
    totals = [summary["windows"][s] for s in stages]
    lines.append(f"{'total':<27}" + "".join(f"{c:>7}" for c in totals) + f"{sum(totals):>8}")
    for item in summary["skipped"]:
        lines.append(f"skipped {item['recording']}: {item['error']}")
    return "\n".join(lines)


@data.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@_window_options
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Cache folder of the window store. Default $SLEEPNAS_CACHE or "
                   "~/.cache/sleepnas.")
def build(data_dir, scheme, num_classes, channels, trim_wake_min, no_trim, on_error, cache_dir):
    """Read every recording under DATA_DIR into the window store.

    A later search or training run on the same files and options reads the windows
    from the store instead of the EDF files.
    """
    from sleepnas.runtime.store import load_cohort

    spec, trim = _spec_and_trim(scheme, num_classes, channels, trim_wake_min, no_trim)
    cohort = load_cohort(data_dir, spec, cache_dir=cache_dir, trim_wake_min=trim,
                         on_error=on_error)
    counts = ", ".join(f"{stage} {n}" for stage, n in cohort.stage_counts().items())
    click.echo(f"{len(cohort)} windows of {len(cohort.recordings)} recordings "
               f"({len(cohort.subject_ids)} subjects) in {cohort.path}: {counts}")


@data.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--subjects", required=True,
              help="Sleep-EDF cassette subject numbers, 0-82, as a list and ranges such as "
                   "'0-4,7'.")
@click.option("--recordings", default="1,2", show_default=True,
              help="Nights of each subject: 1, 2 or '1,2'.")
def fetch(out_dir, subjects, recordings):
    """Download Sleep-EDF cassette recordings from PhysioNet into OUT_DIR.

    Uses MNE's downloader, which puts the files in OUT_DIR/physionet-sleep-data/ and
    skips files already there. Needs internet access.
    """
    from sleepnas.tools.fetch import fetch_sleep_edf, parse_numbers

    found = fetch_sleep_edf(out_dir, parse_numbers(subjects, "--subjects"),
                            parse_numbers(recordings, "--recordings"))
    click.echo(f"{len(found)} recordings in {out_dir}")


@data.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--subjects", type=int, default=4, show_default=True,
              help="Number of subjects, 1 to 100, numbered from 0 as in Sleep-EDF.")
@click.option("--nights", type=int, default=2, show_default=True,
              help="Nights per subject (Sleep-EDF cassette subjects have 1 or 2).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed; the same options write byte-identical files.")
@click.option("--hours", type=float, default=None,
              help="Length of each recording in hours, 0.25 to 24, for short test data. Default: a "
                   "realistic night of about 9-10 h with wake around the sleep period.")
def synth(out_dir, subjects, nights, seed, hours):
    """Write a synthetic cohort in the Sleep-EDF cassette layout into OUT_DIR."""
    from sleepnas.tools.synth import synthesize_cohort

    paths = synthesize_cohort(out_dir, subjects=subjects, nights=nights, seed=seed, hours=hours)
    click.echo(f"wrote {len(paths)} files to {out_dir}")
