"""Search strategies: the options of a search, and the run that every strategy shares.

A strategy finds a genotype. The shared run around it prepares the run directory and the
subject split, resumes from ``checkpoint.pt``, trains the winner from scratch, and writes
``results.json``. A strategy subclasses `SearchStrategy` and fills in ``_run``, as NNI's
strategies do; ``run`` is the one public entry point.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sleepnas.runtime.errors import SleepnasError, check_option, check_positive
from sleepnas.runtime.spec import CASSETTE_CHANNELS, WindowSpec
from sleepnas.runtime.stages import resolve_scheme
from sleepnas.search import rundir
from sleepnas.search.penalty import check_budget
from sleepnas.search.training import InterruptFlag

logger = logging.getLogger(__name__)

#: Strategy name -> "module:class"; a module is imported only when its strategy runs.
STRATEGIES: dict[str, str] = {
    "darts": "sleepnas.search.darts_search:DartsSearch",
    "rl": "sleepnas.search.rl:RLSearch",
}

#: Marker of a search checkpoint (a final-training checkpoint has none).
SEARCH_CHECKPOINT = "sleepnas-search"

# Options that may change when a run is resumed, because none changes its results: where
# things are, how they are shown, and where RL children run. Gradient checkpointing only
# trades memory for time, so an out-of-memory run can go on with it.
_RESUME_FREE_KEYS = ("data_path", "save_dir", "cache_dir", "device", "print_freq", "checkpoint_cells",
                     "workers", "executor", "ray_address")


@dataclass(frozen=True)
class SearchConfig:
    """Options of one search and of the final training of its winner.

    Network options left at ``None`` take the value of ``preset``.

    Attributes
    ----------
    data_path : str
        Folder of recordings (searched recursively).
    strategy : str
        A key of `STRATEGIES`.
    save_dir : str or None
        Run directory; ``None`` makes ``runs/<strategy>-YYYYMMDD-HHMMSS``.
    preset : str
        Network preset (``"default"`` or ``"small"``).
    channels : tuple of str
        Input channel names, in model order.
    scheme : str
        Class scheme, ``"aasm5"`` or ``"rk7"``.
    n_times : int
        Samples per window, at 100 Hz.
    init_channels, num_cells, num_nodes : int or None
        Network shape; ``None`` keeps the preset's.
    ops : tuple of str or None
        Op subset; ``None`` keeps the preset's (all 14).
    batch_size : int
        Windows per mini-batch, for the search and the final training.
    w_lr, w_lr_min : float
        Learning rate of the weights' SGD, cosine-annealed from ``w_lr`` to ``w_lr_min``.
    w_momentum, w_weight_decay, grad_clip : float
        SGD momentum, weight decay and the maximum gradient norm of the weights.
    alpha_lr, alpha_weight_decay : float
        Adam learning rate and weight decay of the arch parameters (betas 0.5, 0.999).
    unrolled : bool
        Second-order DARTS.
    num_epochs : int
        Search epochs.
    final_train_epochs : int
        Epochs of the final training of the derived genotype (0 skips it).
    patience : int or None
        Early stopping of the final training on validation macro-F1.
    print_freq : int
        Log the running losses every this many mini-batches.
    seed : int
        Seed of the split, the weights, the batches and the final training.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    latency_table : str or None
        Latency table JSON measured on the target device.
    latency_weight, flops_weight : float
        Weights of the cost terms of the arch loss.
    latency_budget_ms, flops_budget : float or None
        Budgets in milliseconds and in MFLOPs.
    partial_channels : int
        PC-DARTS channel fraction 1/K of the mixed ops (1 = plain DARTS).
    checkpoint_cells : bool
        Recompute the supernet cells' activations in the backward pass (gradient
        checkpointing). On by default because it cuts the peak memory of the default
        network at batch 32 about threefold, which keeps the search within 8 GB.
    class_weighted : bool
        Cross-entropy weighted by inverse class frequency (search and final training).
    collapse_guard : str
        ``"cap"``, ``"stop"`` or ``"off"`` (see `sleepnas.search.collapse.CollapseGuard`).
    max_parameter_free : int
        Cap of the collapse guard: parameter-free ops per derived cell.
    val_fraction, test_fraction : float
        Subjects held out for validation and for the test.
    arch_fraction : float
        Part of the training subjects whose windows train the arch parameters.
    cache_dir : str or None
        Cache of the window store.
    """

    data_path: str
    strategy: str = "darts"
    save_dir: str | None = None
    preset: str = "default"
    channels: tuple[str, ...] = CASSETTE_CHANNELS
    scheme: str = "aasm5"
    n_times: int = 3000
    init_channels: int | None = None
    num_cells: int | None = None
    num_nodes: int | None = None
    ops: tuple[str, ...] | None = None
    batch_size: int = 32
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    alpha_lr: float = 3e-4
    alpha_weight_decay: float = 1e-3
    unrolled: bool = False
    num_epochs: int = 50
    final_train_epochs: int = 20
    patience: int | None = 10
    print_freq: int = 10
    seed: int = 0
    device: str = "auto"
    latency_table: str | None = None
    latency_weight: float = 0.0
    latency_budget_ms: float | None = None
    flops_weight: float = 0.0
    flops_budget: float | None = None
    partial_channels: int = 1
    checkpoint_cells: bool = True
    class_weighted: bool = False
    collapse_guard: str = "cap"
    max_parameter_free: int = 2
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    arch_fraction: float = 0.5
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        if self.ops is not None:
            object.__setattr__(self, "ops", tuple(self.ops))
        check_option("--strategy", self.strategy, STRATEGIES)
        check_option("--device", self.device, ("auto", "cpu", "cuda"))
        for name in ("batch_size", "w_lr", "alpha_lr", "num_epochs", "n_times", "partial_channels"):
            check_positive(f"--{name.replace('_', '-')}", getattr(self, name))
        check_positive("--final-train-epochs", self.final_train_epochs, allow_zero=True)
        check_positive("--print-freq", self.print_freq, allow_zero=True)
        check_positive("--latency-weight", self.latency_weight, allow_zero=True)
        check_positive("--flops-weight", self.flops_weight, allow_zero=True)
        check_budget("--latency-budget-ms", self.latency_budget_ms)
        check_budget("--flops-budget", self.flops_budget)
        if not self.channels:
            raise SleepnasError("invalid --channels: expected one or more channel names")
        if not 0 < self.arch_fraction < 1:
            raise SleepnasError(f"invalid arch_fraction {self.arch_fraction!r}: expected a number "
                                "between 0 and 1")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["channels"] = list(self.channels)
        data["ops"] = None if self.ops is None else list(self.ops)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SleepnasError(f"invalid search config: unknown keys {unknown}")
        return cls(**data)

    def network_config(self):
        """Return the `NetworkConfig` of the preset with this config's overrides."""
        from sleepnas.search.network import network_config

        return network_config(self.preset, in_channels=len(self.channels), n_times=self.n_times,
                              n_classes=resolve_scheme(self.scheme).n_classes,
                              init_channels=self.init_channels, num_cells=self.num_cells,
                              num_nodes=self.num_nodes, ops=self.ops)

    def window_spec(self) -> WindowSpec:
        """Return the window spec (not yet fitted) of the channels, window length and scheme."""
        return WindowSpec(channels=self.channels, sfreq=100.0, window_s=self.n_times / 100.0,
                          scheme=self.scheme)

    def train_config(self):
        """Return the `TrainConfig` of the final training of the derived genotype."""
        from sleepnas.search.training import TrainConfig

        return TrainConfig(epochs=max(self.final_train_epochs, 1), batch_size=self.batch_size,
                           lr=self.w_lr, momentum=self.w_momentum, weight_decay=self.w_weight_decay,
                           grad_clip=self.grad_clip, class_weighted=self.class_weighted,
                           patience=self.patience, seed=self.seed, device=self.device)


def check_resumable(saved: dict[str, Any], config: SearchConfig, source: Path) -> None:
    """Raise a `SleepnasError` if ``config`` differs from a run's saved config in a search option."""
    current = config.to_dict()
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in _RESUME_FREE_KEYS and saved.get(k) != current.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise SleepnasError(f"cannot resume {source}: its run used other search options ({details}); "
                            "resume with the same options or start a new run")


@dataclass
class SearchData:
    """The windows of a search: its subject split and the two views the search trains on.

    Attributes
    ----------
    final : TrainData
        ``train`` / ``val`` / ``test`` subjects, for the final training and the results.
    search : TrainData
        ``train`` = the subjects that train the weights, ``val`` = those that train the
        arch parameters; no test part.
    split : dict
        Subject ids of ``train``, ``val``, ``test``, ``weights`` and ``arch``.
    """

    final: Any
    search: Any
    split: dict[str, list[str]]


def split_for_search(config: SearchConfig, subject_ids: list[str]) -> dict[str, list[str]]:
    """Split subjects into train, val and test, and the train subjects into weights and arch parts."""
    from sleepnas.runtime.splits import split_subjects

    subject_ids = sorted(str(s) for s in subject_ids)
    if len(subject_ids) < 4:
        raise SleepnasError(
            f"too few subjects to split: {len(subject_ids)} ({', '.join(subject_ids) or 'none'}); a "
            "search needs 4 or more: 2 to train (weights and arch parameters), 1 to validate, 1 to test")
    parts = split_subjects(subject_ids, val_fraction=config.val_fraction,
                           test_fraction=config.test_fraction, seed=config.seed)
    train = sorted(str(s) for s in parts.train)
    if len(train) < 2 or not parts.val:
        raise SleepnasError(
            f"too few subjects to split: the {len(subject_ids)} subjects give {len(train)} for "
            f"training and {len(parts.val)} for validation; give more subjects or lower "
            "the validation and test fractions")
    order = np.random.default_rng([config.seed, 1]).permutation(len(train))
    n_arch = min(max(1, int(round(config.arch_fraction * len(train)))), len(train) - 1)
    arch = sorted(train[i] for i in order[:n_arch])
    return {"train": train, "val": sorted(map(str, parts.val)), "test": sorted(map(str, parts.test)),
            "weights": [s for s in train if s not in arch], "arch": arch}


def load_search_data(config: SearchConfig, split: dict[str, list[str]] | None = None) -> SearchData:
    """Read the cohort from the window store and split it by subject (or use a saved ``split``)."""
    from sleepnas.runtime.store import load_cohort
    from sleepnas.search.training import make_data

    cohort = load_cohort(config.data_path, config.window_spec(), cache_dir=config.cache_dir)
    if len(cohort.labels) == 0:
        raise SleepnasError(f"no scored windows in {config.data_path}: expected recordings with "
                            "hypnograms (Sleep-EDF PSG and Hypnogram EDF files)")
    if split is None:
        split = split_for_search(config, list(cohort.subject_ids))
    else:
        missing = sorted(set(sum(split.values(), [])) - set(map(str, cohort.subject_ids)))
        if missing:
            raise SleepnasError(f"cannot resume: subjects {missing} of the saved split are not in "
                                f"{config.data_path}")
    subjects = np.asarray(cohort.subjects).astype(str)
    final = make_data(cohort.windows, cohort.labels, subjects, cohort.spec, split, seed=config.seed)
    search_split = {"train": split["weights"], "val": split["arch"], "test": []}
    search = make_data(cohort.windows, cohort.labels, subjects, cohort.spec, search_split,
                       seed=config.seed)
    return SearchData(final=final, search=search, split=split)


@dataclass
class SearchContext:
    """Inputs of a strategy's ``_run``, prepared by the shared run.

    Attributes
    ----------
    config : SearchConfig
    run_dir : Path
    data : SearchData
    device : torch.device
    checkpoint : dict or None
        The strategy's own state from the last search checkpoint, when resuming.
    interrupt : InterruptFlag
        ``interrupt.requested`` turns true at the first Ctrl-C: save, then raise `KeyboardInterrupt`.
    search_seconds : float
        Search time of the earlier parts of a resumed run.
    """

    config: SearchConfig
    run_dir: Path
    data: SearchData
    device: torch.device
    checkpoint: dict[str, Any] | None
    interrupt: InterruptFlag
    search_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def elapsed_seconds(self) -> float:
        """Return the search time so far, with the earlier parts of a resumed run."""
        return self.search_seconds + time.perf_counter() - self.started

    def save_checkpoint(self, state: dict[str, Any], *, finished: bool = False) -> None:
        """Write ``checkpoint.pt`` with the strategy's ``state`` (tensors and plain values)."""
        rundir.save_checkpoint(self.run_dir, {
            "kind": SEARCH_CHECKPOINT, "format": 1, "config": self.config.to_dict(),
            "split": self.data.split, "search_seconds": self.elapsed_seconds(),
            "finished": finished, "rng": rundir.capture_rng_state(), "strategy": state,
        })


@dataclass
class SearchResult:
    """Outcome of a search and of the final training of its winner.

    Attributes
    ----------
    genotype : Genotype
    run_dir : Path
    results : dict
        The content of ``results.json``.
    architecture : str
        The readable architecture (``architecture.txt``).
    """

    genotype: Any
    run_dir: Path
    results: dict[str, Any]
    architecture: str


def make_strategy(config: SearchConfig, **kwargs: Any) -> SearchStrategy:
    """Return the strategy object that ``config.strategy`` names; ``kwargs`` go to its constructor."""
    module_name, class_name = STRATEGIES[check_option("--strategy", config.strategy, STRATEGIES)].split(":")
    return getattr(importlib.import_module(module_name), class_name)(config, **kwargs)


#: File of a run directory with the search's history, time and subject parts.
SEARCH_FILE = "search.json"

_OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory")


def _out_of_memory_error(config: SearchConfig, run_dir: Path) -> SleepnasError:
    net = config.network_config()
    if config.checkpoint_cells:
        remedy = "use --partial-channels 4, or --preset small"
        kept = f"the last checkpoint in {run_dir} is kept"
    else:
        remedy = "use --checkpoint-cells or --partial-channels 4, or --preset small"
        kept = f"the last checkpoint in {run_dir} is kept, and --resume with --checkpoint-cells continues it"
    return SleepnasError(
        f"out of memory while searching (batch size {config.batch_size}, {net.init_channels} "
        f"initial channels, {net.num_cells} cells, {len(net.ops)} ops): lower --batch-size, "
        f"--init-channels or --num-cells, {remedy} ({kept})")


def is_out_of_memory(err: BaseException) -> bool:
    """Return whether ``err`` is torch's or Python's out-of-memory error."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in _OOM_MARKERS)


class SearchStrategy:
    """Base of the search strategies: `run` does the shared work around ``_run``.

    ``run`` creates or resumes the run directory, reads and splits the windows, calls the
    subclass's ``_run`` for the genotype, writes it, trains it from scratch and writes
    ``results.json``. A subclass implements ``_run(context) -> Genotype`` and saves its
    state each epoch with ``context.save_checkpoint``.

    Parameters
    ----------
    config : SearchConfig
    resume : bool
        Continue the run in ``config.save_dir``.
    cost_model : CostModel, optional
        Cost model of the search; by default one is built from ``config.latency_table``.
        Tests inject one with a fixed latency table.
    measure_latency : bool
        Time the final model with onnxruntime for ``results.json``.
    """

    #: Name of the strategy, a key of `STRATEGIES`.
    name = ""

    def __init__(self, config: SearchConfig, *, resume: bool = False, cost_model: Any | None = None,
                 measure_latency: bool = True) -> None:
        self.config = config
        self.resume = resume
        self.measure_latency = measure_latency
        self._cost_model = cost_model

    def cost_model(self):
        """Return the cost model: the injected one, else one for the network and the latency table."""
        if self._cost_model is None:
            from sleepnas.search.cost import CostModel, LatencyTable

            table = LatencyTable.load(self.config.latency_table) if self.config.latency_table else None
            if table is None and self.config.latency_weight > 0:
                raise SleepnasError("--latency-weight needs --latency-table FILE (measure one with "
                                    "`sleepnas cost build`, or on the device with `sleepnas cost measure`)")
            self._cost_model = CostModel(self.config.network_config(), table)
        return self._cost_model

    def run(self) -> SearchResult:
        """Search, train the winner and write the run directory; return the result."""
        config = self.config
        data = None
        if not self.resume:
            # Check every input before the run directory is made, so a rejected run leaves no files.
            if config.save_dir is not None:
                existing = Path(config.save_dir)
                if (existing / rundir.CONFIG).exists() or (existing / rundir.CHECKPOINT).exists():
                    rundir.create_run_dir(existing)
            config.network_config()
            if config.latency_table or config.latency_weight > 0:
                cost_model = self.cost_model()
                if cost_model.latency_table is not None:
                    # Looks up every op and fixed part, so a table of another network fails here.
                    cost_model.op_cost_tensors()
            data = load_search_data(config)
        run_dir = rundir.create_run_dir(config.save_dir, prefix=config.strategy, resume=self.resume)
        handler = rundir.add_log_file(run_dir)
        try:
            return self._run_in(run_dir, data)
        except KeyboardInterrupt:
            logger.warning("search interrupted: continue it with sleepnas search --resume %s", run_dir)
            raise
        except Exception as err:
            if is_out_of_memory(err):
                raise _out_of_memory_error(config, run_dir) from None
            raise
        finally:
            logging.getLogger("sleepnas").removeHandler(handler)
            handler.close()

    def _run_in(self, run_dir: Path, data: SearchData | None) -> SearchResult:
        from sleepnas.search.genotype import Genotype
        from sleepnas.search.training import resolve_device

        config = self.config
        net = config.network_config()
        summary, checkpoint = self._start(run_dir)
        if data is None:
            split = summary["split"] if summary else (checkpoint or {}).get("split")
            data = load_search_data(config, split)
        rundir.write_json(run_dir, rundir.SPLIT, data.split)
        rundir.write_window_spec(run_dir, data.final.spec)

        if summary is None:
            device = resolve_device(config.device)
            logger.info("%s search of %s in %s: %d subjects train the weights, %d the arch parameters",
                        self.name, config.preset, run_dir, len(data.split["weights"]), len(data.split["arch"]))
            with InterruptFlag() as interrupt:
                context = SearchContext(config, run_dir, data, device,
                                        checkpoint["strategy"] if checkpoint else None, interrupt,
                                        search_seconds=checkpoint["search_seconds"] if checkpoint else 0.0)
                if checkpoint:
                    rundir.restore_rng_state(checkpoint["rng"])
                genotype, history = self._run(context)
            summary = {"finished": True, "strategy": self.name, "genotype": genotype.to_dict(),
                       "search_seconds": round(context.elapsed_seconds(), 3), "split": data.split,
                       "history": history}
            self._write_search_outputs(run_dir, genotype, summary)
        genotype = Genotype.from_dict(summary["genotype"], source=str(run_dir / SEARCH_FILE))
        logger.info("derived genotype after %.1f s of search:\n%s", summary["search_seconds"],
                    genotype.pretty())
        results = self._final_training(run_dir, genotype, net, data, summary["search_seconds"])
        return SearchResult(genotype, run_dir, results, genotype.pretty(net.num_cells))

    def _start(self, run_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Write or check ``config.json``; return the finished search summary or the search checkpoint."""
        config = self.config
        options = config.to_dict()
        if not self.resume:
            rundir.write_json(run_dir, rundir.CONFIG, {
                "model": "genotype", "network": config.network_config().to_dict(),
                "training": config.train_config().to_dict(), "genotype": None, "options": options})
            return None, None

        saved = rundir.read_json(run_dir, rundir.CONFIG)
        check_resumable(saved.get("options") or {}, config, run_dir)
        if (run_dir / SEARCH_FILE).is_file():
            summary = rundir.read_json(run_dir, SEARCH_FILE)
            if summary.get("finished"):
                return summary, None
        checkpoint = rundir.load_checkpoint(run_dir) if (run_dir / rundir.CHECKPOINT).exists() else None
        if checkpoint is not None and (checkpoint.get("kind") != SEARCH_CHECKPOINT
                                       or "strategy" not in checkpoint or "rng" not in checkpoint):
            raise SleepnasError(f"corrupt checkpoint {run_dir / rundir.CHECKPOINT}: not a sleepnas "
                                "search checkpoint")
        if checkpoint is not None:
            logger.info("resuming the search in %s", run_dir)
        return None, checkpoint

    def _write_search_outputs(self, run_dir: Path, genotype: Any, summary: dict[str, Any]) -> None:
        net = self.config.network_config()
        genotype.save(run_dir / rundir.GENOTYPE)
        rundir.write_text(run_dir, rundir.ARCHITECTURE, genotype.pretty(net.num_cells))
        try:
            from sleepnas.search.plots import plot_genotype

            plot_genotype(genotype, run_dir / "genotype.png")
        except ImportError as err:
            logger.warning("no genotype plot: %s (install matplotlib)", err)
        rundir.write_json(run_dir, SEARCH_FILE, summary)

    def _final_training(self, run_dir: Path, genotype: Any, net: Any, data: SearchData,
                        search_seconds: float) -> dict[str, Any]:
        from sleepnas.search.final import count_flops, count_params, train_run

        config = self.config
        options = config.to_dict()
        if config.final_train_epochs == 0:
            from sleepnas.search.models import create_model

            torch.manual_seed(config.seed)
            model = create_model(genotype, net)
            results = {"params": count_params(model), "flops": count_flops(model, net.in_channels, net.n_times),
                       "search_seconds": search_seconds, "versions": rundir.versions(),
                       "seed": config.seed}
            rundir.write_json(run_dir, rundir.RESULTS, results)
            return results

        checkpoint_path = run_dir / rundir.CHECKPOINT
        resume = False
        if self.resume and checkpoint_path.exists():
            resume = rundir.load_checkpoint(run_dir).get("kind") != SEARCH_CHECKPOINT
        return train_run(genotype, net, data.final, config.train_config(), run_dir, resume=resume,
                         search_seconds=search_seconds, options=options,
                         measure_latency=self.measure_latency, log_every=config.print_freq)

    def _run(self, context: SearchContext) -> tuple[Any, list[dict[str, Any]]]:
        """Search; return the genotype and a list of per-epoch records. Subclasses implement it."""
        raise NotImplementedError
