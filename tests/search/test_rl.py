"""Tests of the RL search: reward, children, the whole run, resumption and parallel workers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sleepnas.runtime.errors import SleepnasError
from sleepnas.search import rl_loop
from sleepnas.search.cost import CostModel
from sleepnas.search.genotype import Genotype
from sleepnas.search.rl import RLSearchConfig, genotype_key, read_history, search_config
from sleepnas.search.rl_child import DIVERGED, OK, RewardConfig, child_seed
from sleepnas.search.rl_report import compare_results, pareto_front
from sleepnas.search.strategy import SearchConfig, make_strategy
from tests.searchtools import TINY_OPTIONS, fake_cohort_loader, fixed_latency_table

RUN_FILES = ("config.json", "split.json", "window_spec.json", "genotype.json", "architecture.txt",
             "search.json", "results.json", "checkpoint.pt", "log.txt", "history.jsonl", "pareto.json",
             "pareto.png", "rewards.png", "genotype.png", "weights.pt")

OP_MS = {"conv_1x1": 0.2, "conv_3x1": 0.3, "max_pool_3x1": 0.05, "identity": 0.01}

# Keys of a child record that differ between runs of the same search (wall-clock times).
_TIMING_KEYS = ("train_seconds", "eval_seconds")


@pytest.fixture
def fake_cohort(monkeypatch):
    monkeypatch.setattr("sleepnas.runtime.store.load_cohort", fake_cohort_loader())
    monkeypatch.setenv("SLEEPNAS_PROGRESS", "0")


def _config(tmp_path, name: str, **changes) -> RLSearchConfig:
    options = {**TINY_OPTIONS, "n_times": 1000, "num_iterations": 3, "children_per_update": 2,
               "eval_epochs": 1, "child_max_batches": 2, "latency_budget_ms": 1.0, **changes}
    return RLSearchConfig(data_path=str(tmp_path / "data"), save_dir=str(tmp_path / name), **options)


def _run(config: RLSearchConfig, **kwargs):
    net = config.network_config()
    cost_model = CostModel(net, fixed_latency_table(net, OP_MS))
    return make_strategy(config, cost_model=cost_model, measure_latency=kwargs.pop("measure_latency", False),
                         **kwargs).run()


def _comparable(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in _TIMING_KEYS} for r in read_history(run_dir)]


# --- reward ------------------------------------------------------------------------


def test_slower_child_equal_accuracy_lower_reward():
    reward = RewardConfig("accuracy", latency_budget_ms=10.0)
    metrics = {"accuracy": 0.8}
    fast, on_budget, slow = (reward.reward(metrics, ms, None) for ms in (5.0, 10.0, 20.0))
    assert on_budget == pytest.approx(0.8)
    assert slow == pytest.approx(0.8 * 2.0 ** -0.07)
    assert fast == pytest.approx(0.8 * 0.5 ** -0.07)
    assert fast > on_budget > slow


def test_flops_factor_and_product():
    reward = RewardConfig("macro_f1", latency_budget_ms=2.0, flops_budget_mflops=1.0,
                          latency_exponent=-0.1, flops_exponent=-0.2)
    value = reward.reward({"macro_f1": 0.5}, 4.0, 4e6)
    assert value == pytest.approx(0.5 * 2.0 ** -0.1 * 4.0 ** -0.2)


def test_no_budget_no_factor():
    assert RewardConfig().reward({"accuracy": 0.7}, 123.0, 1e9) == pytest.approx(0.7)


@pytest.mark.parametrize("reward_type, metrics, expected", [
    ("kappa", {"kappa": -0.2}, 0.4),
    ("loss", {"loss": 0.5}, math.exp(-0.5)),
    ("accuracy", {"accuracy": float("nan")}, 0.0),
])
def test_reward_types(reward_type, metrics, expected):
    assert RewardConfig(reward_type).reward(metrics, None, None) == pytest.approx(expected)


def test_reward_needs_latency_with_budget():
    with pytest.raises(SleepnasError, match="no latency for the reward"):
        RewardConfig(latency_budget_ms=1.0).reward({"accuracy": 0.5}, None, None)
    with pytest.raises(SleepnasError, match="--reward-type"):
        RewardConfig("f1")


# --- pieces --------------------------------------------------------------------------


def test_genotype_key_ignores_edge_order():
    a = Genotype((("conv_1x1", 0), ("identity", 1)), (("conv_1x1", 0), ("identity", 1)), 1)
    b = Genotype((("identity", 1), ("conv_1x1", 0)), (("conv_1x1", 0), ("identity", 1)), 1)
    c = Genotype((("identity", 0), ("conv_1x1", 1)), (("conv_1x1", 0), ("identity", 1)), 1)
    assert genotype_key(a) == genotype_key(b)
    assert genotype_key(a) != genotype_key(c)


def test_child_seed_depends_on_position_only():
    assert child_seed(0, 1, 0) == child_seed(0, 1, 0)
    assert len({child_seed(0, 1, 0), child_seed(0, 1, 1), child_seed(0, 2, 0), child_seed(1, 1, 0)}) == 4


def test_pareto_front_keeps_undominated():
    def child(key, accuracy, latency):
        return {"status": OK, "key": key, "iteration": 1, "child": 0, "genotype": {}, "flops": 1,
                "reward": accuracy, "metrics": {"accuracy": accuracy}, "predicted_latency_ms": latency,
                "measured_latency_ms": None}

    records = [child("a", 0.6, 1.0), child("b", 0.7, 2.0), child("c", 0.65, 3.0), child("d", 0.8, 4.0),
               child("a", 0.6, 1.0), {"status": "failed", "key": "e"}]
    front = pareto_front(records)
    assert front["latency"] == "predicted"
    assert len(front["points"]) == 4
    assert [p["key"] for p in front["front"]] == ["a", "b", "d"]


def test_compare_results_table():
    darts = {"accuracy": 0.8, "macro_f1": 0.7, "kappa": 0.6, "params": 1234, "flops": 2.5e6,
             "latency_ms": 1.25, "search_seconds": 10.0}
    comparison = compare_results({"darts": darts, "rl": {**darts, "accuracy": None}})
    lines = comparison["text"].splitlines()
    assert lines[0].split() == ["darts", "rl"]
    assert lines[1].split() == ["Accuracy", "80.0", "%", "n/a"]
    assert "1,234" in lines[4]
    assert "2.50" in lines[5]
    assert [row["metric"] for row in comparison["rows"]] == [
        "accuracy", "macro_f1", "kappa", "params", "flops", "latency_ms", "search_seconds"]


def test_config_rejects_bad_options(tmp_path):
    with pytest.raises(SleepnasError, match="--reward-latency"):
        _config(tmp_path, "x", reward_latency="guessed")
    with pytest.raises(SleepnasError, match="--ray-address needs --executor ray"):
        _config(tmp_path, "x", ray_address="127.0.0.1:1")
    with pytest.raises(SleepnasError, match="--proxy-keep-fraction"):
        _config(tmp_path, "x", proxy_keep_fraction=0.0)
    with pytest.raises(SleepnasError, match="--num-iterations"):
        _config(tmp_path, "x", num_iterations=0)


def test_search_config_drops_rl_options_for_darts(tmp_path):
    darts = search_config({"data_path": str(tmp_path), "strategy": "darts", "num_iterations": 5})
    assert type(darts) is SearchConfig
    rl = search_config({"data_path": str(tmp_path), "strategy": "rl", "num_iterations": 5})
    assert isinstance(rl, RLSearchConfig)
    assert rl.num_iterations == 5


def test_predicted_budget_needs_latency_table(tmp_path, fake_cohort):
    config = _config(tmp_path, "run")
    with pytest.raises(SleepnasError, match="needs --latency-table"):
        make_strategy(config, measure_latency=False).run()


@pytest.mark.slow
def test_diverged_child_gets_zero_reward(tmp_path, fake_cohort):
    from sleepnas.search.rl_child import ChildTask, child_data, evaluate_child
    from sleepnas.search.strategy import load_search_data

    config = _config(tmp_path, "run", w_lr=1e30)
    data = child_data(load_search_data(config).final)
    train = config.train_config().to_dict()
    train.update(epochs=1, patience=None, max_batches_per_epoch=3, grad_clip=None)
    genotype = Genotype((("conv_1x1", 0), ("conv_3x1", 1)) * 2, (("conv_1x1", 0), ("conv_3x1", 1)) * 2, 2)
    task = ChildTask(1, 0, genotype.to_dict(), config.network_config().to_dict(), train, measure_latency=False)
    out = evaluate_child(task, data)
    assert out["status"] == DIVERGED
    assert "diverged" in out["reason"]


# --- whole searches -----------------------------------------------------------------


@pytest.mark.slow
def test_tiny_rl_search_writes_every_file(tmp_path, fake_cohort):
    config = _config(tmp_path, "run", final_train_epochs=1)
    result = _run(config, measure_latency=True)
    run_dir = tmp_path / "run"
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name

    history = read_history(run_dir)
    assert [(r["iteration"], r["child"]) for r in history] == [(i, k) for i in (1, 2, 3) for k in (0, 1)]
    for record in history:
        assert record["status"] == OK
        assert record["measured_latency_ms"] > 0
        assert record["flops"] > 0
        assert record["predicted_latency_ms"] > 0
        assert set(record["metrics"]) == {"accuracy", "macro_f1", "kappa", "loss"}
        expected = record["metrics"]["accuracy"] * (record["predicted_latency_ms"] / 1.0) ** -0.07
        assert record["reward"] == pytest.approx(expected)
    best = max(history, key=lambda r: r["reward"])
    assert result.genotype.to_dict() == best["genotype"]

    summary = json.loads((run_dir / "search.json").read_text())
    assert [u["iteration"] for u in summary["history"]] == [1, 2, 3]
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("accuracy", "macro_f1", "kappa", "params", "flops", "search_seconds"):
        assert results[key] is not None, key
    pareto = json.loads((run_dir / "pareto.json").read_text())
    assert pareto["latency"] == "measured"
    assert pareto["front"]
    assert (run_dir / "rewards.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_cached_child_not_retrained(tmp_path, fake_cohort, monkeypatch):
    calls = []
    original = rl_loop.evaluate_child

    def counting(task, data):
        calls.append((task.iteration, task.child))
        return original(task, data)

    monkeypatch.setattr(rl_loop, "evaluate_child", counting)
    # One op and one node: every child is one of few genotypes, so repeats are certain.
    config = _config(tmp_path, "run", ops=("conv_1x1",), num_nodes=1, num_iterations=2, children_per_update=3)
    _run(config)
    history = read_history(tmp_path / "run")
    keys = [r["key"] for r in history]
    assert len(calls) == len(set(keys))
    assert sum(r["cached"] for r in history) == len(keys) - len(set(keys))
    first = {}
    for record in history:
        first.setdefault(record["key"], record)
        assert record["metrics"] == first[record["key"]]["metrics"]


@pytest.mark.slow
def test_resume_does_not_retrain(tmp_path, fake_cohort, monkeypatch):
    _run(_config(tmp_path, "whole"))
    whole = _comparable(tmp_path / "whole")

    # The process dies after update 2's children are recorded but before its checkpoint.
    original_update = rl_loop.SearchLoop._update

    def update_then_die(self, batch, records, seconds):
        if self.state.iteration == 1:
            raise KeyboardInterrupt
        original_update(self, batch, records, seconds)

    monkeypatch.setattr(rl_loop.SearchLoop, "_update", update_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(_config(tmp_path, "cut"))
    monkeypatch.setattr(rl_loop.SearchLoop, "_update", original_update)
    assert len(read_history(tmp_path / "cut")) == 4

    calls = []
    original_evaluate = rl_loop.evaluate_child

    def counting(task, data):
        calls.append((task.iteration, task.child))
        return original_evaluate(task, data)

    monkeypatch.setattr(rl_loop, "evaluate_child", counting)
    _run(_config(tmp_path, "cut"), resume=True)
    assert calls == [(3, 0), (3, 1)]
    assert _comparable(tmp_path / "cut") == whole


@pytest.mark.slow
def test_two_workers_same_history(tmp_path, fake_cohort):
    _run(_config(tmp_path, "one", workers=1))
    _run(_config(tmp_path, "two", workers=2))
    one, two = _comparable(tmp_path / "one"), _comparable(tmp_path / "two")
    assert len(one) == 6
    assert one == two


@pytest.mark.slow
def test_diverged_child_search_goes_on(tmp_path, fake_cohort, monkeypatch):
    original = rl_loop.evaluate_child

    def diverge_first(task, data):
        if (task.iteration, task.child) == (1, 0):
            return {"status": DIVERGED, "reason": "training diverged: the loss is nan", "metrics": {},
                    "params": 1, "measured_latency_ms": None, "train_seconds": 0.1, "eval_seconds": 0.1}
        return original(task, data)

    monkeypatch.setattr(rl_loop, "evaluate_child", diverge_first)
    _run(_config(tmp_path, "run"))
    history = read_history(tmp_path / "run")
    assert history[0]["status"] == DIVERGED
    assert history[0]["reward"] == 0.0
    assert len(history) == 6
    assert all(r["status"] == OK for r in history[1:] if r["key"] != history[0]["key"])


@pytest.mark.slow
def test_failed_child_recorded_search_goes_on(tmp_path, fake_cohort, monkeypatch):
    original = rl_loop.evaluate_child

    def fail_first(task, data):
        if (task.iteration, task.child) == (1, 0):
            raise RuntimeError("worker lost its data")
        return original(task, data)

    monkeypatch.setattr(rl_loop, "evaluate_child", fail_first)
    _run(_config(tmp_path, "run"))
    history = read_history(tmp_path / "run")
    assert history[0]["status"] == "failed"
    assert history[0]["reason"] == "RuntimeError: worker lost its data"
    assert history[0]["reward"] == 0.0
    assert len(history) == 6
    assert "failed" in (tmp_path / "run" / "log.txt").read_text()


@pytest.mark.slow
def test_proxy_screen_skips_training(tmp_path, fake_cohort):
    config = _config(tmp_path, "run", proxy_screen="synflow", num_iterations=3, children_per_update=3)
    _run(config)
    history = read_history(tmp_path / "run")
    statuses = [r["status"] for r in history]
    assert "screened" in statuses
    assert OK in statuses
    assert all(r["reward"] is None for r in history if r["status"] == "screened")
    assert all(np.isfinite(r["proxy_score"]) for r in history if not r["cached"])
    last = json.loads((tmp_path / "run" / "search.json").read_text())["history"][-1]
    assert last["screened_children"] == statuses.count("screened")
    assert last["proxy_seconds"] > 0


@pytest.mark.slow
@pytest.mark.ray
def test_ray_cluster_same_history(tmp_path, fake_cohort):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'sleepnas[ray]')")
    _run(_config(tmp_path, "one", workers=1))
    _run(_config(tmp_path, "ray", executor="ray", workers=2))
    assert _comparable(tmp_path / "ray") == _comparable(tmp_path / "one")
