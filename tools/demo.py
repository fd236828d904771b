"""The demo job: the whole sleepnas path on a synthetic cohort, as a user would run it.

`run_demo` runs the same ``sleepnas`` commands a user types, in order, and then
reads their output files into a short report:

1. ``data synth``: a synthetic cohort in the Sleep-EDF cassette layout;
2. ``cost build``: the latency table of the small preset on this machine;
3. ``search --strategy darts``: a hardware-aware search with the small preset and the
   final training of its winner;
4. ``train --model tinysleepnet``: the hand-designed reference model on the same split;
5. ``export``: both models to ONNX with the parity check, and the winner in INT8;
6. ``score --plot``: a night of a held-out test subject;
7. ``bench``: the latency of the winner beside its INT8 version and the reference.

The window store and the latency table live in the cache folder, so a second run
reads no EDF file and times no op again.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.utils import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run.

    Attributes
    ----------
    subjects, nights : int
        Synthetic cohort size; subjects are split into train, validation and test.
    hours : float or None
        Recording length; ``None`` is a realistic night of about 9-10 h.
    search_epochs, final_train_epochs, reference_epochs : int
        Epochs of the DARTS search, the winner's final training and the reference model.
    partial_channels : int
        PC-DARTS channel fraction 1/K of the mixed ops; 4 cuts a search step about in half.
    batch_size : int
        Windows per mini-batch.
    bench_repeats : int
        Timed runs per latency measurement.
    """

    subjects: int
    nights: int
    hours: float | None
    search_epochs: int
    final_train_epochs: int
    reference_epochs: int
    partial_channels: int
    batch_size: int
    bench_repeats: int


#: About 15 minutes on 2 CPU cores.
FULL_PLAN = DemoPlan(subjects=10, nights=1, hours=4.0, search_epochs=4, final_train_epochs=10,
                     reference_epochs=8, partial_channels=4, batch_size=32, bench_repeats=100)
#: A couple of minutes: what the end-to-end test runs.
QUICK_PLAN = DemoPlan(subjects=5, nights=1, hours=1.0, search_epochs=1, final_train_epochs=1,
                      reference_epochs=1, partial_channels=4, batch_size=32, bench_repeats=20)

#: Folders and files of OUT_DIR that a demo run makes again each time.
_RUN_OUTPUTS = ("search", "reference", "scores", "winner.onnx", "winner-int8.onnx",
                "reference.onnx", "bench.json", "report.txt", "latency-table.json")


def _format_args(args: Sequence[str]) -> str:
    return " ".join(f"'{a}'" if (" " in a or not a) else a for a in args)


def run_command(args: Sequence[str], *, capture: bool = False) -> str:
    """Run ``sleepnas ARGS`` in this process and return its standard output if captured.

    A failing command raises its `SleepnasError` with the command named first.
    """
    from sleepnas.tools.cli import cli

    logger.info("$ sleepnas %s", _format_args(args))
    buffer = io.StringIO()
    redirect = contextlib.redirect_stdout(buffer) if capture else contextlib.nullcontext()
    try:
        with redirect:
            cli.main(args=list(args), prog_name="sleepnas", standalone_mode=False)
    except click.ClickException as err:
        raise SleepnasError(f"demo step 'sleepnas {args[0]}' failed: {err.format_message()}") from err
    except SleepnasError as err:
        raise SleepnasError(f"demo step 'sleepnas {args[0]}' failed: {err}") from err
    return buffer.getvalue()


def _held_out_psg(search_dir: Path, cohort_dir: Path) -> Path:
    """Return the PSG file of the first night of the first test subject of the search's split."""
    split = json.loads((search_dir / "split.json").read_text())
    test_subjects = split.get("test") or []
    for subject in sorted(test_subjects):
        matches = sorted(cohort_dir.rglob(f"{subject}*-PSG.edf"))
        if matches:
            return matches[0]
    raise SleepnasError(f"no PSG file of a test subject {test_subjects} in {cohort_dir}")


def _clear_previous_run(out_dir: Path) -> None:
    for name in _RUN_OUTPUTS:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _synthesize(plan: DemoPlan, cohort_dir: Path, seed: int) -> None:
    expected = plan.subjects * plan.nights
    if cohort_dir.is_dir() and len(list(cohort_dir.glob("*-PSG.edf"))) == expected:
        logger.info("re-using the synthetic cohort in %s", cohort_dir)
        return
    if cohort_dir.exists():
        shutil.rmtree(cohort_dir)
    args = ["data", "synth", str(cohort_dir), "--subjects", str(plan.subjects),
            "--nights", str(plan.nights), "--seed", str(seed)]
    if plan.hours is not None:
        args += ["--hours", str(plan.hours)]
    run_command(args)


def _use_one_torch_thread() -> None:
    """Run torch on one thread for the rest of this process.

    The small preset's ops are too small to gain from a second thread: a search step
    took 0.65 s on one thread and 0.67 s on two, on a 2-core machine. Two OpenMP
    threads beside any other busy process spin-wait, which made a step 30-60 times
    slower there.
    """
    import torch

    torch.set_num_threads(1)


def run_demo(out_dir: str | Path, *, quick: bool = False, seed: int = 0,
             cache_dir: str | Path | None = None) -> dict:
    """Run the demo job into ``out_dir`` and return its report as a dict.

    Parameters
    ----------
    out_dir : path
        Folder for the cohort, the runs, the ONNX files, the scores and the report.
        A previous demo's outputs there are replaced; its synthetic cohort is re-used.
    quick : bool
        A couple of minutes instead of about 15 (smaller cohort, one epoch each).
    seed : int
        Seed of the cohort, the split, the search and the trainings.
    cache_dir : path, optional
        Cache of the window store and the latency table.
    """
    plan = QUICK_PLAN if quick else FULL_PLAN
    _use_one_torch_thread()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous_run(out_dir)
    cache = ["--cache-dir", str(cache_dir)] if cache_dir is not None else []
    started = time.perf_counter()

    cohort_dir = out_dir / "cohort"
    _synthesize(plan, cohort_dir, seed)

    table = out_dir / "latency-table.json"
    run_command(["cost", "build", "--preset", "small", "-o", str(table), *cache])

    search_dir = out_dir / "search"
    run_command([
        "search", "--strategy", "darts", "--data-path", str(cohort_dir), "--preset", "small",
        "--save-dir", str(search_dir), "--num-epochs", str(plan.search_epochs),
        "--final-train-epochs", str(plan.final_train_epochs), "--batch-size", str(plan.batch_size),
        "--latency-table", str(table), "--latency-weight", "0.5", "--seed", str(seed),
        "--partial-channels", str(plan.partial_channels), "--class-weighted",
        # The small preset's supernet fits in memory, so recomputing cells only costs time.
        "--no-checkpoint-cells", *cache,
    ])

    reference_dir = out_dir / "reference"
    run_command([
        "train", "--model", "tinysleepnet", "--data-path", str(cohort_dir),
        "--save-dir", str(reference_dir), "--epochs", str(plan.reference_epochs),
        "--batch-size", str(plan.batch_size), "--seed", str(seed), "--class-weighted", *cache,
    ])

    winner, winner_int8, reference = (out_dir / "winner.onnx", out_dir / "winner-int8.onnx",
                                      out_dir / "reference.onnx")
    run_command(["export", str(search_dir), "-o", str(winner), *cache])
    run_command(["export", str(search_dir), "-o", str(winner_int8), "--quantize", "int8", *cache])
    run_command(["export", str(reference_dir), "-o", str(reference), *cache])

    night = _held_out_psg(search_dir, cohort_dir)
    scores_dir = out_dir / "scores"
    run_command(["score", str(winner), str(night), "-o", str(scores_dir), "--plot"])

    bench_text = run_command([
        "bench", str(winner), "--compare", str(winner_int8), "--compare", str(reference),
        "--threads", "1", "--batch-sizes", "1,32", "--repeats", str(plan.bench_repeats), "--json",
    ], capture=True)
    bench = json.loads(bench_text)
    atomic_write_json(out_dir / "bench.json", bench)

    report = build_report(out_dir, search_dir, reference_dir, scores_dir, night, bench,
                          seconds=time.perf_counter() - started)
    atomic_write_text(out_dir / "report.txt", format_report(report))
    return report


def _p50(bench: list[dict], model: Path, batch_size: int = 1) -> float | None:
    for record in bench:
        if Path(record["model"]).name == model.name and record["batch_size"] == batch_size:
            return record["p50_ms"]
    return None


def build_report(out_dir: Path, search_dir: Path, reference_dir: Path, scores_dir: Path,
                 night: Path, bench: list[dict], *, seconds: float) -> dict:
    """Collect the figures of a finished demo run from its output files."""
    winner = json.loads((search_dir / "results.json").read_text())
    reference = json.loads((reference_dir / "results.json").read_text())
    summaries = sorted(scores_dir.glob("*.summary.json"))
    night_summary = json.loads(summaries[0].read_text()) if summaries else {}
    keys = ("accuracy", "macro_f1", "kappa", "params", "flops")

    def _row(results: dict, onnx: Path) -> dict:
        row = {key: results.get(key) for key in keys}
        row["onnx_p50_ms"] = _p50(bench, onnx)
        return row

    return {
        "genotype": (search_dir / "architecture.txt").read_text(),
        "winner": _row(winner, out_dir / "winner.onnx"),
        "winner_int8_p50_ms": _p50(bench, out_dir / "winner-int8.onnx"),
        "reference": _row(reference, out_dir / "reference.onnx"),
        "scored_night": night.name,
        "scored_night_agreement": night_summary.get("agreement"),
        "seconds": round(seconds, 1),
        "files": {
            "search run": str(search_dir),
            "reference run": str(reference_dir),
            "ONNX models": str(out_dir / "*.onnx"),
            "hypnograms": str(scores_dir),
            "latency benchmark": str(out_dir / "bench.json"),
        },
    }


def _number(value: float | int | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_report(report: dict) -> str:
    """Format the demo report as the text printed at its end."""
    lines = [report["genotype"].rstrip(), "",
             "Results on held-out test subjects (synthetic signals):",
             f"{'model':<16}{'accuracy':>10}{'macro-F1':>10}{'kappa':>8}{'params':>10}"
             f"{'MFLOPs':>9}{'p50 ms':>9}"]
    for name in ("winner", "reference"):
        row = report[name]
        flops = None if row["flops"] is None else row["flops"] / 1e6
        lines.append(f"{name:<16}{_number(row['accuracy'], '.3f'):>10}"
                     f"{_number(row['macro_f1'], '.3f'):>10}{_number(row['kappa'], '.3f'):>8}"
                     f"{_number(row['params'], ','):>10}{_number(flops, '.2f'):>9}"
                     f"{_number(row['onnx_p50_ms'], '.3f'):>9}")
    lines.append(f"{'winner INT8':<16}{'':>10}{'':>10}{'':>8}{'':>10}{'':>9}"
                 f"{_number(report['winner_int8_p50_ms'], '.3f'):>9}")
    lines.append("(p50: onnxruntime latency per window at batch 1 on 1 thread)")
    agreement = report.get("scored_night_agreement") or {}
    if agreement:
        lines.append(f"Scored night {report['scored_night']}: accuracy "
                     f"{_number(agreement.get('accuracy'), '.3f')}, kappa "
                     f"{_number(agreement.get('kappa'), '.3f')} against its hypnogram")
    lines.append("")
    lines.append(f"Files ({report['seconds']:.0f} s in all):")
    for what, where in report["files"].items():
        lines.append(f"  {what:<18} {where}")
    return "\n".join(lines) + "\n"
