"""The update loop of the RL search: sample, screen, evaluate, reward, learn, record."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from sleepnas.runtime.errors import SleepnasError
from sleepnas.search.controller import Controller, ControllerSample, ControllerTrainer
from sleepnas.search.executors import make_executor
from sleepnas.search.genotype import Genotype
from sleepnas.search.rl import (SCREEN_WARMUP, SCREENED, RLSearchConfig, _SearchState, genotype_key,
                                read_history, write_history)
from sleepnas.search.rl_child import DIVERGED, FAILED, OK, ChildTask, child_data, child_seed, evaluate_child
from sleepnas.search.strategy import SearchContext

logger = logging.getLogger(__name__)

# Keys of a child's evaluation that the cache keeps and a repeated child copies.
_RESULT_KEYS = ("status", "reason", "metrics", "params", "measured_latency_ms", "train_seconds",
                "eval_seconds", "proxy_score")


class SearchLoop:
    """The updates of `sleepnas.search.rl.RLSearch`, with everything each step needs."""

    def __init__(self, context: SearchContext, controller: Controller, trainer: ControllerTrainer,
                 generator: torch.Generator, state: _SearchState, cost_model: Any, measure_latency: bool) -> None:
        self.context = context
        self.config: RLSearchConfig = context.config
        self.network = self.config.network_config()
        self.controller, self.trainer, self.generator = controller, trainer, generator
        self.state, self.cost_model, self.measure_latency = state, cost_model, measure_latency
        self.reward_config = self.config.reward_config()
        self.pending: dict[str, dict[str, Any]] = {}
        self._proxy_batch: tuple[torch.Tensor, torch.Tensor] | None = None

    # --- the loop -------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        """Run the remaining updates; return every child's record."""
        config = self.config
        records = self._restore_history()
        # NOTE: Ray workers may run on other machines, so the train and val windows are
        # copied into the object store whole; a cohort larger than memory does not fit.
        in_memory = config.executor == "ray"
        data = child_data(self.context.data.final, in_memory=in_memory)
        with make_executor(config.executor, evaluate_child, data, workers=config.workers,
                           threads=config.threads_per_worker, ray_address=config.ray_address) as executor:
            while self.state.iteration < config.num_iterations:
                if self.context.interrupt.requested:
                    self.context.save_checkpoint(self.checkpoint_state())
                    logger.warning("checkpoint saved before update %d", self.state.iteration + 1)
                    raise KeyboardInterrupt
                started = time.perf_counter()
                samples = [self.controller.sample(self.generator) for _ in range(config.children_per_update)]
                batch = self._evaluate(samples, executor)
                records.extend(batch)
                write_history(self.context.run_dir, records)
                self._update(batch, records, time.perf_counter() - started)
                self.context.save_checkpoint(self.checkpoint_state())
        return records

    def checkpoint_state(self) -> dict[str, Any]:
        state = self.state
        return {"trainer": self.trainer.state_dict(), "generator": self.generator.get_state(),
                "state": {"iteration": state.iteration, "updates": state.updates, "cache": state.cache,
                          "proxy_scores": state.proxy_scores, "proxy_seconds": state.proxy_seconds}}

    def _restore_history(self) -> list[dict[str, Any]]:
        """Keep the children of finished updates; remember later ones so they are not retrained."""
        records = read_history(self.context.run_dir)
        done = [r for r in records if r["iteration"] <= self.state.iteration]
        for record in records[len(done):]:
            if record["status"] in (OK, DIVERGED) and not record.get("cached"):
                self.pending[record["key"]] = {k: record.get(k) for k in _RESULT_KEYS}
        if len(done) != len(records) or self.pending:
            logger.info("resuming: %d children of an unfinished update are reused, not retrained",
                        len(self.pending))
        write_history(self.context.run_dir, done)
        return done

    # --- one update -------------------------------------------------------------------

    def _new_record(self, sample: ControllerSample, child: int) -> dict[str, Any]:
        iteration = self.state.iteration + 1
        genotype = sample.genotype
        key = genotype_key(genotype)
        cost = self.state.cache.get(key, {})
        predicted = cost.get("predicted_latency_ms")
        flops = cost.get("flops")
        if "flops" not in cost:
            flops = self.cost_model.genotype_flops(genotype)
            predicted = (self.cost_model.genotype_latency_ms(genotype)
                         if self.cost_model.latency_table is not None else None)
        return {"iteration": iteration, "child": child, "key": key, "genotype": genotype.to_dict(),
                "actions": list(sample.actions), "log_prob": sample.log_prob, "entropy": sample.entropy,
                "seed": child_seed(self.config.seed, iteration, child), "predicted_latency_ms": predicted,
                "flops": flops, "cached": False, "attempts": 0, "status": None, "reason": None,
                "metrics": {}, "params": None, "measured_latency_ms": None, "train_seconds": None,
                "eval_seconds": None, "proxy_score": None}

    def _task(self, record: dict[str, Any]) -> ChildTask:
        config = self.config
        train = config.train_config().to_dict()
        train.update(epochs=config.eval_epochs, patience=None, seed=record["seed"],
                     num_threads=config.threads_per_worker, max_batches_per_epoch=config.child_max_batches)
        return ChildTask(record["iteration"], record["child"], record["genotype"], self.network.to_dict(),
                         train, measure_latency=self.measure_latency)

    def _evaluate(self, samples: list[ControllerSample], executor: Any) -> list[dict[str, Any]]:
        records = [self._new_record(sample, k) for k, sample in enumerate(samples)]
        first_of: dict[str, int] = {}
        to_run: list[int] = []
        for k, record in enumerate(records):
            key = record["key"]
            if self.state.cache.get(key, {}).get("status") is not None:
                record.update({n: self.state.cache[key].get(n) for n in _RESULT_KEYS}, cached=True)
            elif key in self.pending:
                record.update(self.pending.pop(key), attempts=1)
            elif key in first_of:
                continue
            elif self.config.proxy_screen and not self._passes_screen(record, samples[k].genotype):
                record.update(status=SCREENED, reason=f"{self.config.proxy_screen} score below the "
                                                      f"{1 - self.config.proxy_keep_fraction:.2f} quantile")
            else:
                to_run.append(k)
            first_of.setdefault(key, k)

        outcomes = executor.map([self._task(records[k]) for k in to_run])
        for k, outcome in zip(to_run, outcomes):
            record = records[k]
            record["attempts"] = outcome.attempts
            if outcome.ok:
                record.update(outcome.value)
            else:
                record.update(status=FAILED, reason=outcome.error, metrics={})
                logger.warning("child %d of update %d failed: %s", k + 1, record["iteration"], outcome.error)

        # A repeat within this update copies the first evaluation of its genotype.
        for k, record in enumerate(records):
            first = records[first_of[record["key"]]]
            if first_of[record["key"]] != k and record["status"] is None:
                record.update({n: first.get(n) for n in _RESULT_KEYS}, cached=True)
        for record in records:
            self._reward(record)
        return records

    def _reward(self, record: dict[str, Any]) -> None:
        status = record["status"]
        record["reward"] = None
        if status in (DIVERGED, FAILED):
            record["reward"] = 0.0
        elif status == OK:
            latency = (record["predicted_latency_ms"] if self.config.reward_latency == "predicted"
                       else record["measured_latency_ms"])
            try:
                record["reward"] = self.reward_config.reward(record["metrics"], latency, record["flops"])
            except SleepnasError as err:
                record.update(status=FAILED, reason=str(err), reward=0.0)
        if record["status"] in (OK, DIVERGED):
            self.state.cache[record["key"]] = {
                **{n: record.get(n) for n in _RESULT_KEYS},
                "predicted_latency_ms": record["predicted_latency_ms"], "flops": record["flops"]}
        else:
            self.state.cache.setdefault(record["key"], {}).update(
                predicted_latency_ms=record["predicted_latency_ms"], flops=record["flops"])

    def _update(self, batch: list[dict[str, Any]], records: list[dict[str, Any]], seconds: float) -> None:
        """Learn from the children with a reward; failed ones (dead worker, error) count as 0."""
        learn = [r for r in batch if r["reward"] is not None]
        stats: dict[str, Any] = {"loss": None, "baseline": self.trainer.baseline.value, "entropy": None}
        if learn:
            stats = self.trainer.update([r["actions"] for r in learn], [r["reward"] for r in learn])
        rewarded = [r["reward"] for r in records if r["status"] == OK]
        self.state.iteration += 1
        update = {"iteration": self.state.iteration, "children": len(batch),
                  "trained": sum(1 for r in batch if r["status"] in (OK, DIVERGED) and not r["cached"]),
                  "mean_reward": float(np.mean([r["reward"] for r in learn])) if learn else None,
                  "best_reward": max(rewarded) if rewarded else None,
                  "baseline": self.trainer.baseline.value, "loss": stats["loss"], "entropy": stats["entropy"],
                  "seconds": round(seconds, 3), **self._screen_totals(records)}
        self.state.updates.append(update)
        logger.info("update %d/%d: %d children, mean reward %s, best %s, baseline %s",
                    update["iteration"], self.config.num_iterations, len(batch), _fmt(update["mean_reward"]),
                    _fmt(update["best_reward"]), _fmt(update["baseline"]))

    # --- proxy screening ------------------------------------------------------------

    def _passes_screen(self, record: dict[str, Any], genotype: Genotype) -> bool:
        """Score the child with the zero-cost proxy; return whether it is promising enough to train."""
        from sleepnas.search.models import create_model
        from sleepnas.search.proxies import compute_proxies

        config = self.config
        started = time.perf_counter()
        previous = torch.get_num_threads()
        torch.set_num_threads(config.threads_per_worker)
        try:
            torch.manual_seed(record["seed"])
            model = create_model(genotype, self.network)
            x, y = self._screen_batch()
            score = compute_proxies(model, x, y, [config.proxy_screen], seed=record["seed"])[config.proxy_screen]
        finally:
            torch.set_num_threads(previous)
        self.state.proxy_seconds += time.perf_counter() - started
        record["proxy_score"] = score
        scores = self.state.proxy_scores
        scores.append(score)
        if len(scores) <= SCREEN_WARMUP or not np.isfinite(score):
            return bool(np.isfinite(score)) or len(scores) <= SCREEN_WARMUP
        threshold = float(np.quantile(np.asarray(scores, dtype=np.float64), 1.0 - config.proxy_keep_fraction))
        return score >= threshold

    def _screen_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the fixed mini-batch of training windows every child is screened on."""
        if self._proxy_batch is None:
            from sleepnas.search.dataset import read_batch

            data = self.context.data.final
            rng = np.random.default_rng([self.config.seed, 3])
            size = min(self.config.batch_size, len(data.train_index))
            index = np.sort(rng.choice(data.train_index, size=size, replace=False))
            self._proxy_batch = read_batch(data, index, torch.device("cpu"))
        return self._proxy_batch

    def _screen_totals(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        if not self.config.proxy_screen:
            return {}
        trained = [r["eval_seconds"] for r in records
                   if r["status"] in (OK, DIVERGED) and not r["cached"] and r.get("eval_seconds") is not None]
        screened = sum(1 for r in records if r["status"] == SCREENED)
        mean_train = float(np.mean(trained)) if trained else 0.0
        return {"screened_children": screened, "proxy_seconds": round(self.state.proxy_seconds, 3),
                "estimated_seconds_saved": round(screened * mean_train - self.state.proxy_seconds, 3)}

    # --- the end of the search ----------------------------------------------------

    def winner(self, records: list[dict[str, Any]]) -> Genotype:
        """Return the trained child with the highest reward (the earliest of equals)."""
        trained = [r for r in records if r["status"] == OK]
        if not trained:
            reasons = sorted({str(r.get("reason")) for r in records})
            raise SleepnasError(f"no child of the RL search trained successfully ({len(records)} children; "
                                f"reasons: {'; '.join(reasons)[:300]})")
        best = max(trained, key=lambda r: (r["reward"], -r["iteration"], -r["child"]))
        logger.info("best child: update %d, child %d, reward %.4f", best["iteration"], best["child"] + 1,
                    best["reward"])
        return Genotype.from_dict(best["genotype"])

    def write_outputs(self, records: list[dict[str, Any]]) -> None:
        """Write ``pareto.json``, ``pareto.png`` and ``rewards.png``."""
        from sleepnas.search.rl_report import pareto_front, plot_pareto, plot_rewards, write_pareto

        run_dir = self.context.run_dir
        front = pareto_front(records)
        write_pareto(run_dir, front)
        try:
            plot_pareto(front, run_dir / "pareto.png")
            plot_rewards(records, self.state.updates, run_dir / "rewards.png")
        except ImportError as err:
            logger.warning("no RL plots: %s (install matplotlib)", err)
        totals = self._screen_totals(records)
        if totals:
            logger.info("proxy screening: %d children not trained, %.1f s of proxies, about %.1f s "
                        "of training saved (estimated from the mean time to evaluate a child)",
                        totals["screened_children"], totals["proxy_seconds"], totals["estimated_seconds_saved"])


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
