"""Tests of the RL controller: probabilities by hand, sampling, decoding and REINFORCE."""

from __future__ import annotations

import math

import pytest
import torch

from sleepnas.runtime.errors import SleepnasError
from sleepnas.search.controller import Controller, ControllerTrainer, EMABaseline
from sleepnas.search.genotype import Genotype

OPS = ("conv_1x1", "conv_3x1", "zero")
INPUT_BIAS = (0.3, -0.2)
OP_BIAS = (1.0, -0.5)


def _constant_controller(temperature: float = 1.0, tanh_constant: float | None = None) -> Controller:
    """A one-node controller whose logits are its heads' biases: all weights are zero.

    With zero LSTM weights every gate is sigmoid(0) = 0.5 and the candidate is tanh(0) = 0,
    so the cell state and the hidden state stay 0 and each head outputs its bias.
    """
    controller = Controller(OPS, 1, hidden_size=4, temperature=temperature, tanh_constant=tanh_constant)
    with torch.no_grad():
        for param in controller.parameters():
            param.zero_()
        controller.input_head.bias.copy_(torch.tensor(INPUT_BIAS))
        controller.op_head.bias.copy_(torch.tensor(OP_BIAS))
    return controller


def _softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def _entropy(probs: list[float]) -> float:
    return -sum(p * math.log(p) for p in probs if p > 0)


@pytest.mark.parametrize("temperature, tanh_constant", [(1.0, None), (2.0, None), (1.5, 1.2)])
def test_log_prob_entropy_by_hand(temperature, tanh_constant):
    controller = _constant_controller(temperature, tanh_constant)

    def logits(bias):
        scaled = [b / temperature for b in bias]
        return [tanh_constant * math.tanh(v) for v in scaled] if tanh_constant else scaled

    p_input = _softmax(logits(INPUT_BIAS))
    p_op = _softmax(logits(OP_BIAS))
    # Normal cell: inputs 1 then 0 (the second input has one choice left: probability 1),
    # ops 0 and 1. Reduction cell: inputs 0 then 1, ops 1 and 1.
    actions = (1, 0, 0, 1, 0, 1, 1, 1)
    expected_log_prob = (math.log(p_input[1]) + math.log(p_op[0]) + math.log(p_op[1])
                         + math.log(p_input[0]) + math.log(p_op[1]) + math.log(p_op[1]))
    expected_entropy = 2 * (_entropy(p_input) + 2 * _entropy(p_op))

    log_prob, entropy = controller.log_prob_entropy(actions)
    assert log_prob.item() == pytest.approx(expected_log_prob, abs=1e-6)
    assert entropy.item() == pytest.approx(expected_entropy, abs=1e-6)


def test_sample_frequencies_match_probabilities():
    controller = _constant_controller()
    generator = torch.Generator().manual_seed(0)
    first_inputs = [controller.sample(generator).actions[0] for _ in range(1000)]
    share = sum(1 for a in first_inputs if a == 0) / len(first_inputs)
    assert share == pytest.approx(_softmax(list(INPUT_BIAS))[0], abs=0.05)


def test_sample_log_prob_matches_rescoring():
    controller = Controller(OPS, 2, hidden_size=8, seed=1)
    sample = controller.sample(torch.Generator().manual_seed(3))
    log_prob, entropy = controller.log_prob_entropy(sample.actions)
    assert sample.log_prob == pytest.approx(log_prob.item(), abs=1e-6)
    assert sample.entropy == pytest.approx(entropy.item(), abs=1e-6)


def test_same_seed_same_children():
    one = Controller(OPS, 2, hidden_size=8, seed=5)
    two = Controller(OPS, 2, hidden_size=8, seed=5)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert [one.sample(g1).actions for _ in range(5)] == [two.sample(g2).actions for _ in range(5)]


def test_samples_valid_genotypes_without_zero():
    controller = Controller(OPS, 3, hidden_size=8, seed=0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        genotype = controller.sample(generator).genotype
        genotype.check(num_nodes=3, ops=OPS)
        for edges in (genotype.normal, genotype.reduce):
            assert all(op != "zero" for op, _ in edges)
            for i in range(0, len(edges), 2):
                assert edges[i][1] < edges[i + 1][1]


def test_encode_decode_round_trip():
    controller = Controller(OPS, 2, hidden_size=8)
    genotype = Genotype(normal=(("conv_3x1", 1), ("conv_1x1", 0), ("conv_1x1", 0), ("conv_3x1", 2)),
                        reduce=(("conv_1x1", 0), ("conv_1x1", 1), ("conv_3x1", 1), ("conv_1x1", 2)),
                        num_nodes=2)
    actions = controller.encode(genotype)
    assert actions[:4] == (1, 0, 1, 0)
    decoded = controller.decode(actions)
    assert decoded.normal[:2] == (("conv_1x1", 0), ("conv_3x1", 1))
    assert decoded.reduce == genotype.reduce


def test_invalid_actions_rejected():
    controller = Controller(OPS, 1, hidden_size=4)
    with pytest.raises(SleepnasError, match="2 decisions, expected 8"):
        controller.log_prob_entropy((0, 1))
    with pytest.raises(SleepnasError, match="not the first input"):
        controller.log_prob_entropy((1, 1, 0, 0, 0, 1, 0, 0))
    with pytest.raises(SleepnasError, match="expected 0 to 1"):
        controller.log_prob_entropy((0, 1, 2, 0, 0, 1, 0, 0))


def test_invalid_options_rejected():
    with pytest.raises(SleepnasError, match="--temperature"):
        Controller(OPS, 1, temperature=0.0)
    with pytest.raises(SleepnasError, match="only 'zero'"):
        Controller(("zero",), 1)
    with pytest.raises(SleepnasError, match="--baseline-decay"):
        EMABaseline(1.0)


def test_baseline_moving_average():
    baseline = EMABaseline(decay=0.9)
    assert baseline.update(1.0) == 1.0
    assert baseline.update(0.0) == pytest.approx(0.9)
    assert baseline.update(0.5) == pytest.approx(0.9 * 0.9 + 0.1 * 0.5)


def test_update_uses_earlier_baseline():
    controller = Controller(OPS, 1, hidden_size=4)
    trainer = ControllerTrainer(controller, baseline_decay=0.5, entropy_coeff=0.0)
    actions = controller.sample(torch.Generator().manual_seed(0)).actions

    first = trainer.update([actions], [0.6])
    assert first["baseline"] == pytest.approx(0.6)
    assert first["advantage"] == pytest.approx(0.0)
    assert trainer.baseline.value == pytest.approx(0.6)

    second = trainer.update([actions, actions], [1.0, 0.8])
    assert second["baseline"] == pytest.approx(0.6)
    assert second["advantage"] == pytest.approx(0.3)
    assert trainer.baseline.value == pytest.approx(0.5 * 0.6 + 0.5 * 0.9)


def test_positive_advantage_raises_probability():
    controller = Controller(OPS, 1, hidden_size=8, seed=2)
    trainer = ControllerTrainer(controller, lr=0.05, entropy_coeff=0.0)
    actions = controller.sample(torch.Generator().manual_seed(1)).actions
    trainer.baseline.value = 0.0
    before = controller.log_prob_entropy(actions)[0].item()
    trainer.update([actions], [1.0])
    after = controller.log_prob_entropy(actions)[0].item()
    assert after > before

    other = ControllerTrainer(Controller(OPS, 1, hidden_size=8, seed=2), lr=0.05, entropy_coeff=0.0)
    other.baseline.value = 1.0
    other.update([actions], [0.0])
    assert other.controller.log_prob_entropy(actions)[0].item() < before


def test_trainer_state_round_trip():
    controller = Controller(OPS, 1, hidden_size=4, seed=0)
    trainer = ControllerTrainer(controller)
    actions = controller.sample(torch.Generator().manual_seed(0)).actions
    trainer.update([actions], [0.4])
    state = trainer.state_dict()

    restored = ControllerTrainer(Controller(OPS, 1, hidden_size=4, seed=9))
    restored.load_state_dict(state)
    assert restored.baseline.value == pytest.approx(0.4)
    assert restored.controller.log_prob_entropy(actions)[0].item() == pytest.approx(
        controller.log_prob_entropy(actions)[0].item())
