"""Final training into a run directory, the results a sleep researcher needs, and K-fold runs.

`train_run` trains a genotype or a reference model from scratch on one subject split,
evaluates it on the test subjects and writes every file of the run directory.
`train_folds` repeats it over subject-wise folds and reports, as sleep-staging papers
do, the metrics pooled over all test windows, the mean and standard deviation over
folds, and the metrics of each subject.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.metrics import agreement

from . import rundir
from .models import GENOTYPE_MODEL, create_model, describe_model, model_name
from .training import TrainConfig, TrainData, TrainResult, train_model

logger = logging.getLogger(__name__)

#: Keys of ``config.json`` that may change when a run is resumed.
_RESUME_FREE = ("device", "num_threads", "eval_batch_size", "resume", "cache_dir", "save_dir")

#: Thread count and batch size the latency in ``results.json`` is measured at.
LATENCY_THREADS = 1
LATENCY_BATCH_SIZE = 1


def count_params(model: nn.Module) -> int:
    """Return the number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model: nn.Module, n_chans: int, n_times: int) -> int | None:
    """Return the FLOPs of one window (one fused multiply-add = one FLOP), or ``None``.

    ``None`` means the search space's FLOP counter is not available or failed, and a
    warning names the reason.
    """
    try:
        from .flops import count_flops as _count
    except ImportError:
        logger.warning("FLOPs not counted: sleepnas.search.flops is not available")
        return None
    try:
        return int(_count(model.eval(), (1, n_chans, n_times)))
    except Exception as err:  # noqa: BLE001 - a counting failure must not lose a trained run
        logger.warning("FLOPs not counted: %s: %s", type(err).__name__, err)
        return None


def measure_latency_ms(model: nn.Module, n_chans: int, n_times: int, *,
                       threads: int = LATENCY_THREADS, repeats: int = 50) -> float | None:
    """Export ``model`` to a temporary ONNX file and return its median onnxruntime latency in ms.

    One window per run (batch 1) on ``threads`` intra-op threads, after 10 warm-up
    runs. Returns ``None``, with a warning, when the export or the timing fails.
    """
    from sleepnas.runtime.timing import time_model

    from .onnx_io import export_onnx

    was_training = model.training
    example = torch.zeros(1, n_chans, n_times)
    try:
        with tempfile.TemporaryDirectory(prefix="sleepnas-latency-") as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(model.cpu(), [example], path, input_names=["windows"],
                        output_names=["logits"], dynamic_batch=True)
            timing = time_model(path, threads=threads, batch_size=LATENCY_BATCH_SIZE,
                                warmup=10, repeats=repeats)
            return round(float(timing.p50_ms), 4)
    except Exception as err:  # noqa: BLE001 - a timing failure must not lose a trained run
        logger.warning("latency not measured: %s: %s", type(err).__name__, str(err).splitlines()[0])
        return None
    finally:
        model.train(was_training)


def build_results(result: TrainResult, model: nn.Module, data: TrainData, *, seed: int,
                  search_seconds: float | None = None, measure_latency: bool = True) -> dict[str, Any]:
    """Assemble ``results.json``: test metrics, validation accuracies, cost and provenance."""
    spec = data.spec
    test = result.test or {}
    results: dict[str, Any] = {
        "accuracy": test.get("accuracy"),
        "macro_f1": test.get("macro_f1"),
        "kappa": test.get("kappa"),
        "per_stage_f1": test.get("per_stage_f1"),
        "confusion": test.get("confusion"),
        "stage_names": list(spec.stage_names),
        "n_test_windows": test.get("n_windows", 0),
        "test_loss": test.get("loss"),
        "per_subject": test.get("per_subject", {}),
        "best_val_accuracy": result.best_val_accuracy,
        "final_val_accuracy": result.final_val_accuracy,
        "best_val_macro_f1": result.best_val_macro_f1,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "class_weights": result.class_weights,
        "params": count_params(model),
        "flops": count_flops(model, spec.n_chans, spec.n_times),
        "latency_ms": measure_latency_ms(model, spec.n_chans, spec.n_times) if measure_latency else None,
        "latency_threads": LATENCY_THREADS,
        "latency_batch_size": LATENCY_BATCH_SIZE,
        "search_seconds": search_seconds,
        "train_seconds": result.train_seconds,
        "versions": rundir.versions(),
        "seed": seed,
        "history": result.history,
    }
    notes = []
    if results["flops"] is None:
        notes.append("flops is null: the FLOP counter failed or is missing (see log.txt)")
    if results["latency_ms"] is None:
        notes.append("latency_ms is null: " + ("not measured on request" if not measure_latency else
                                                "the ONNX export or its timing failed (see log.txt)"))
    if notes:
        results["notes"] = notes
    return results


def _run_config(name: str, network_config: Any, config: TrainConfig, options: dict[str, Any] | None,
                genotype: Any) -> dict[str, Any]:
    return {
        "model": name,
        "network": network_config.to_dict(),
        "training": config.to_dict(),
        "genotype": genotype.to_dict() if genotype is not None else None,
        "options": dict(options or {}),
    }


def _check_same_run(run_dir: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    def strip(config: dict[str, Any]) -> dict[str, Any]:
        out = {k: config.get(k) for k in ("model", "network", "genotype", "folds")}
        out["training"] = {k: v for k, v in (config.get("training") or {}).items() if k not in _RESUME_FREE}
        out["options"] = {k: v for k, v in (config.get("options") or {}).items() if k not in _RESUME_FREE}
        return out

    old, new = strip(saved), strip(current)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        raise SleepnasError(f"cannot resume {run_dir}: its {rundir.CONFIG} differs in "
                            f"{', '.join(changed)}; resume with the options of that run, "
                            f"or start a new run")


def _write_config(run_dir: Path, run_config: dict[str, Any]) -> None:
    # Keys a search wrote before its final training (its own options) are kept.
    path = run_dir / rundir.CONFIG
    merged = rundir.read_json(run_dir, rundir.CONFIG) if path.is_file() else {}
    merged.update(run_config)
    rundir.write_json(run_dir, rundir.CONFIG, merged)


def train_run(name_or_genotype: Any, network_config: Any, data: TrainData, config: TrainConfig,
              run_dir: str | os.PathLike, *, resume: bool = False, search_seconds: float | None = None,
              options: dict[str, Any] | None = None, measure_latency: bool = True,
              log_every: int | None = None,
              checkpoint_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a genotype or a reference model from scratch and write its run directory.

    Writes ``config.json`` (keeping keys a search wrote there before), ``window_spec.json``,
    ``split.json``, ``genotype.json`` (for a genotype), ``architecture.txt``,
    ``checkpoint.pt`` each epoch, ``weights.pt`` and ``results.json``. The directory
    must exist (see `rundir.create_run_dir`).

    Parameters
    ----------
    name_or_genotype : str or Genotype
        A reference model name or the genotype to train.
    network_config : NetworkConfig
        Input, classes and cells; its ``in_channels``, ``n_times`` and ``n_classes``
        must match ``data.spec``.
    data : TrainData
    config : TrainConfig
    run_dir : path-like
    resume : bool
        Continue the run in ``run_dir``; its options must match.
    search_seconds : float, optional
        Time the search took, recorded in ``results.json``.
    options : dict, optional
        Further options to record in ``config.json["options"]`` (data path, channels, ...).
    measure_latency : bool
        Time the exported model with onnxruntime for ``latency_ms``.
    log_every : int, optional
        Log the running training loss every this many mini-batches.
    checkpoint_extra : dict, optional
        Stored in every checkpoint under ``"extra"`` (a search's finished state, say).

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    run_dir = Path(run_dir)
    name = model_name(name_or_genotype)
    genotype = name_or_genotype if name == GENOTYPE_MODEL else None
    spec = data.spec
    expected = (spec.n_chans, spec.n_times, len(spec.stage_names))
    given = (network_config.in_channels, network_config.n_times, network_config.n_classes)
    if expected != given:
        raise SleepnasError(f"the network takes (channels, samples, classes) {given} but the data has "
                            f"{expected}: set --channels and --scheme to match the network")

    run_config = _run_config(name, network_config, config, options, genotype)
    if resume:
        _check_same_run(run_dir, rundir.read_json(run_dir, rundir.CONFIG), run_config)
    _write_config(run_dir, run_config)
    rundir.write_window_spec(run_dir, spec)
    rundir.write_json(run_dir, rundir.SPLIT, data.split)
    if genotype is not None:
        genotype.save(run_dir / rundir.GENOTYPE)

    torch.manual_seed(config.seed)
    model = create_model(name_or_genotype, network_config)
    architecture = describe_model(name_or_genotype, network_config, model)
    rundir.write_text(run_dir, rundir.ARCHITECTURE, architecture)
    logger.info("training %s (%d parameters) for up to %d epochs in %s", name, count_params(model),
                config.epochs, run_dir)

    if resume and not (run_dir / rundir.CHECKPOINT).is_file():
        logger.info("%s has no checkpoint yet: training starts at epoch 1", run_dir)
        resume = False
    result = train_model(model, data, config, run_dir=run_dir, resume=resume, log_every=log_every,
                         checkpoint_extra=checkpoint_extra)
    results = build_results(result, model, data, seed=config.seed, search_seconds=search_seconds,
                            measure_latency=measure_latency)
    rundir.write_json(run_dir, rundir.RESULTS, results)
    return results


def _mean_std(values: Sequence[float | None]) -> dict[str, float | None]:
    defined = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not defined:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(defined)), "std": float(np.std(defined, ddof=1)) if len(defined) > 1 else 0.0,
            "n": len(defined)}


def summarize_folds(fold_results: Sequence[dict[str, Any]], stage_names: Sequence[str]) -> dict[str, Any]:
    """Combine the ``results.json`` of K folds as sleep-staging papers report them.

    Returns
    -------
    dict
        ``pooled``: accuracy, macro-F1, kappa, per-stage F1 and confusion over the test
        windows of all folds together (from the summed confusion matrices);
        ``mean_std``: mean and sample standard deviation over folds of accuracy,
        macro-F1 and kappa; ``per_subject``: each test subject's metrics, and
        ``per_subject_mean_std``: their mean and standard deviation over subjects.
    """
    n_classes = len(stage_names)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    per_subject: dict[str, Any] = {}
    for fold, results in enumerate(fold_results, start=1):
        if results.get("confusion") is not None:
            confusion += np.asarray(results["confusion"], dtype=np.int64)
        for subject, metrics in (results.get("per_subject") or {}).items():
            per_subject[subject] = {**metrics, "fold": fold}

    # Expanding the summed confusion into label pairs gives exactly the pooled metrics.
    rows, cols = np.nonzero(confusion)
    counts = confusion[rows, cols]
    pooled = agreement(np.repeat(rows, counts), np.repeat(cols, counts), stage_names)

    keys = ("accuracy", "macro_f1", "kappa")
    return {
        "pooled": pooled,
        "mean_std": {k: _mean_std([r.get(k) for r in fold_results]) for k in keys},
        "per_subject": per_subject,
        "per_subject_mean_std": {k: _mean_std([m.get(k) for m in per_subject.values()]) for k in keys},
    }


def format_results(results: dict[str, Any]) -> str:
    """Return the closing console summary of a run (or of K folds)."""
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f} %"

    def num(value: float | None, digits: int = 3) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    if "folds" in results:
        return _format_folds(results, num)

    flops = results.get("flops")
    latency = results.get("latency_ms")
    lines = [
        f"Best val accuracy:  {pct(results.get('best_val_accuracy'))}",
        f"Final val accuracy: {pct(results.get('final_val_accuracy'))}",
        f"Test accuracy:      {pct(results.get('accuracy'))} ({results.get('n_test_windows', 0)} windows)",
        f"Test macro-F1:      {num(results.get('macro_f1'))}",
        f"Test kappa:         {num(results.get('kappa'))}",
        "Per-stage F1:       " + ", ".join(f"{k} {num(v)}" for k, v in (results.get("per_stage_f1") or {}).items()),
        f"Params:             {results.get('params'):,}",
        f"FLOPs:              {'n/a' if flops is None else f'{flops / 1e6:.2f} M'}",
        f"Latency (ONNX):     {'n/a' if latency is None else f'{latency:.3f} ms'} "
        f"(batch {results.get('latency_batch_size')}, {results.get('latency_threads')} thread)",
    ]
    return "\n".join(lines) + "\n"


def _format_folds(results: dict[str, Any], num: Any) -> str:
    summary = results["summary"]
    lines = [f"Cross-validation over {results['folds']} folds (subject-wise)"]
    for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("kappa", "kappa")):
        stats = summary["mean_std"][key]
        mean_std = "n/a" if stats["mean"] is None else f"{stats['mean']:.3f} +- {stats['std']:.3f}"
        lines.append(f"  test {label}: pooled {num(summary['pooled'][key])}, "
                     f"mean +- std over folds {mean_std}")
    lines.append("Per subject (test fold):")
    for subject, metrics in sorted(summary["per_subject"].items()):
        lines.append(f"  {subject}: accuracy {num(metrics.get('accuracy'))}, macro-F1 "
                     f"{num(metrics.get('macro_f1'))}, kappa {num(metrics.get('kappa'))}, "
                     f"{metrics.get('n_windows')} windows (fold {metrics.get('fold')})")
    flops, latency = results.get("flops"), results.get("latency_ms")
    flops_text = "n/a" if flops is None else f"{flops / 1e6:.2f} M"
    latency_text = "n/a" if latency is None else f"{latency:.3f} ms"
    lines.append(f"Params: {results.get('params'):,}   FLOPs: {flops_text}   "
                 f"Latency (ONNX, fold 1): {latency_text}")
    return "\n".join(lines) + "\n"


def train_folds(name_or_genotype: Any, network_config: Any, make_fold_data: Any, splits: Sequence[Any],
                config: TrainConfig, run_dir: str | os.PathLike, *, resume: bool = False,
                options: dict[str, Any] | None = None, measure_latency: bool = True) -> dict[str, Any]:
    """Train one model per subject-wise fold into ``run_dir/fold-k`` and summarize the folds.

    Parameters
    ----------
    name_or_genotype, network_config, config
        As for `train_run`; every fold trains with the same seed.
    make_fold_data : callable
        ``make_fold_data(split) -> TrainData`` for one fold's split (the normalization is
        fitted on that fold's training subjects).
    splits : sequence of SubjectSplit or mapping
        One split per fold; each subject is a test subject in exactly one fold.
    run_dir : path-like
    resume : bool
        Skip finished folds (those with a ``results.json``) and resume the others.

    Returns
    -------
    dict
        The content of ``run_dir/results.json``: ``folds``, ``fold_results`` (each
        fold's test metrics), ``summary`` (see `summarize_folds`) and provenance.
    """
    run_dir = Path(run_dir)
    run_config = _run_config(model_name(name_or_genotype), network_config, config, options,
                             name_or_genotype if model_name(name_or_genotype) == GENOTYPE_MODEL else None)
    run_config["folds"] = len(splits)
    if resume:
        _check_same_run(run_dir, rundir.read_json(run_dir, rundir.CONFIG), run_config)
    _write_config(run_dir, run_config)

    fold_results = []
    stage_names: Sequence[str] = ()
    for k, split in enumerate(splits, start=1):
        fold_dir = run_dir / f"fold-{k}"
        if resume and (fold_dir / rundir.RESULTS).is_file():
            logger.info("fold %d/%d already finished: reading %s", k, len(splits), fold_dir / rundir.RESULTS)
            fold_results.append(rundir.read_json(fold_dir, rundir.RESULTS))
            stage_names = fold_results[-1]["stage_names"]
            continue
        logger.info("fold %d/%d", k, len(splits))
        data = make_fold_data(split)
        stage_names = data.stage_names
        fold_resume = resume and (fold_dir / rundir.CHECKPOINT).is_file()
        fold_dir.mkdir(parents=True, exist_ok=True)
        fold_results.append(train_run(name_or_genotype, network_config, data, config, fold_dir,
                                      resume=fold_resume, options=options,
                                      measure_latency=measure_latency and k == 1))

    summary = summarize_folds(fold_results, stage_names)
    keep = ("accuracy", "macro_f1", "kappa", "per_stage_f1", "n_test_windows", "best_val_accuracy",
            "final_val_accuracy", "train_seconds")
    results = {
        **{key: summary["pooled"][key] for key in ("accuracy", "macro_f1", "kappa", "per_stage_f1",
                                                    "confusion")},
        "folds": len(splits),
        "summary": summary,
        "fold_results": [{key: r.get(key) for key in keep} for r in fold_results],
        "stage_names": list(stage_names),
        "params": fold_results[0].get("params") if fold_results else None,
        "flops": fold_results[0].get("flops") if fold_results else None,
        "latency_ms": fold_results[0].get("latency_ms") if fold_results else None,
        "train_seconds": round(sum(r.get("train_seconds") or 0.0 for r in fold_results), 3),
        "versions": rundir.versions(),
        "seed": config.seed,
    }
    rundir.write_json(run_dir, rundir.RESULTS, results)
    return results


def load_training_cohort(data_path: str | os.PathLike, spec: Any, *, seed: int = 0,
                         folds: int | None = None, val_fraction: float = 0.15,
                         test_fraction: float = 0.15,
                         cache_dir: str | os.PathLike | None = None) -> tuple[Any, list[Any]]:
    """Load the cohort of ``data_path`` through the window store and split it by subject.

    Returns
    -------
    cohort : Cohort
    splits : list of SubjectSplit
        One train/validation/test split, or ``folds`` of them for cross-validation.
        With ``folds``, each fold's validation subjects are ``val_fraction`` of the
        subjects outside its test fold.
    """
    from sleepnas.runtime.splits import kfold_subjects, split_subjects
    from sleepnas.runtime.store import load_cohort

    cohort = load_cohort(data_path, spec, cache_dir=cache_dir)
    subject_ids = list(cohort.subject_ids)
    logger.info("cohort: %d windows of %d subjects from %s", len(cohort.labels), len(subject_ids), data_path)
    if folds is None:
        split = split_subjects(subject_ids, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
        logger.info("split by subject: %d training, %d validation, %d test subjects",
                    len(split.train), len(split.val), len(split.test))
        return cohort, [split]
    if folds < 2 or folds > len(subject_ids):
        raise SleepnasError(f"invalid --folds {folds}: expected 2 to {len(subject_ids)}, "
                            f"the number of subjects in {data_path}")
    return cohort, kfold_subjects(subject_ids, folds, seed=seed, val_fraction=val_fraction)


def train_cohort(name_or_genotype: Any, network_config: Any, cohort: Any, splits: Sequence[Any],
                 config: TrainConfig, run_dir: str | os.PathLike, *, folds: bool = False,
                 resume: bool = False, options: dict[str, Any] | None = None,
                 measure_latency: bool = True, log_every: int | None = None) -> dict[str, Any]:
    """Train on a loaded cohort: `train_run` on ``splits[0]``, or `train_folds` over all splits.

    ``folds`` selects cross-validation; the other parameters are those of `train_run`.
    """
    from .training import data_from_cohort

    def make_fold_data(split: Any) -> TrainData:
        return data_from_cohort(cohort, split, seed=config.seed)

    if not folds:
        return train_run(name_or_genotype, network_config, make_fold_data(splits[0]), config, run_dir,
                         resume=resume, options=options, measure_latency=measure_latency,
                         log_every=log_every)
    return train_folds(name_or_genotype, network_config, make_fold_data, splits, config, run_dir,
                       resume=resume, options=options, measure_latency=measure_latency)


def train_from_path(name_or_genotype: Any, network_config: Any, data_path: str | os.PathLike,
                    spec: Any, config: TrainConfig, run_dir: str | os.PathLike, *,
                    folds: int | None = None, resume: bool = False,
                    cache_dir: str | os.PathLike | None = None, val_fraction: float = 0.15,
                    test_fraction: float = 0.15, options: dict[str, Any] | None = None,
                    measure_latency: bool = True, log_every: int | None = None) -> dict[str, Any]:
    """Load and split the cohort of ``data_path`` (`load_training_cohort`), then train (`train_cohort`).

    ``spec`` gives the channels, rate and scheme of the windows (unfitted); the other
    parameters are those of `load_training_cohort` and `train_run`.
    """
    cohort, splits = load_training_cohort(data_path, spec, seed=config.seed, folds=folds,
                                          val_fraction=val_fraction, test_fraction=test_fraction,
                                          cache_dir=cache_dir)
    return train_cohort(name_or_genotype, network_config, cohort, splits, config, run_dir,
                        folds=folds is not None, resume=resume, options=options,
                        measure_latency=measure_latency, log_every=log_every)


def quick_train(genotype: Any, network_config: Any, data_path: str | os.PathLike, spec: Any, *,
                epochs: int, seed: int = 0, batch_size: int = 32, device: str = "auto",
                cache_dir: str | os.PathLike | None = None,
                val_fraction: float = 0.15) -> dict[str, Any]:
    """Train a genotype (or reference model) briefly without a run directory and return validation metrics.

    The quick evaluation of the original tool: ``epochs`` epochs of the same training
    as `train_run` (no early stopping), on a seeded subject split with no test part.

    Returns
    -------
    dict
        ``epochs``, ``train_seconds``, ``best_val_accuracy``, ``final_val_accuracy``,
        ``best_val_macro_f1``, ``final_val_kappa`` and ``history``.
    """
    from sleepnas.runtime.splits import split_subjects
    from sleepnas.runtime.store import load_cohort

    from .training import data_from_cohort

    cohort = load_cohort(data_path, spec, cache_dir=cache_dir)
    split = split_subjects(list(cohort.subject_ids), val_fraction=val_fraction, test_fraction=0.0,
                           seed=seed)
    data = data_from_cohort(cohort, split, seed=seed)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, patience=None, seed=seed, device=device)
    torch.manual_seed(seed)
    model = create_model(genotype, network_config)
    result = train_model(model, data, config)
    return {
        "epochs": result.epochs_run,
        "train_seconds": result.train_seconds,
        "best_val_accuracy": result.best_val_accuracy,
        "final_val_accuracy": result.final_val_accuracy,
        "best_val_macro_f1": result.best_val_macro_f1,
        "final_val_kappa": result.history[-1]["val_kappa"] if result.history else None,
        "history": result.history,
    }
