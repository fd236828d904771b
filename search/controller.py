"""The RL controller: an LSTM that samples genotypes, and its REINFORCE update.

For each cell type (normal, then reduction) and each intermediate node, the controller
takes four decisions in turn, as the NASNet controller does. It picks the first input
node, then the second input node (any earlier node but the first input), then the op on
the first input and the op on the second. Each decision is a softmax over the logits of a linear head on the
LSTM's hidden state; the embedding of the chosen value is the next LSTM input.

The update is REINFORCE with an exponential-moving-average baseline and an entropy bonus.

References
----------
Zoph, B., & Le, Q. V. (2017). Neural architecture search with reinforcement learning. ICLR.
Zoph, B., Vasudevan, V., Shlens, J., & Le, Q. V. (2018). Learning transferable architectures
for scalable image recognition (NASNet). CVPR.
Pham, H., Guan, M., Zoph, B., Le, Q., & Dean, J. (2018). Efficient neural architecture search
via parameter sharing (ENAS: temperature and tanh constant of the logits). ICML.
Williams, R. J. (1992). Simple statistical gradient-following algorithms for connectionist
reinforcement learning (REINFORCE). Machine Learning 8.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sleepnas.runtime.errors import SleepnasError, check_positive
from sleepnas.search.genotype import EDGES_PER_NODE, Genotype
from sleepnas.search.ops import check_ops

logger = logging.getLogger(__name__)

#: Learning rate of the controller's Adam optimizer, as in Zoph & Le (2017).
CONTROLLER_LR = 3.5e-4

#: Decisions per intermediate node: two inputs, then two ops.
DECISIONS_PER_NODE = 4


@dataclass(frozen=True)
class ControllerSample:
    """One child drawn by the controller.

    Attributes
    ----------
    genotype : Genotype
        The child, with each node's two edges ordered by input node.
    actions : tuple of int
        The decisions in sampling order: per cell type and node, first input, second
        input, op of the first input, op of the second (op indices into ``Controller.ops``).
    log_prob : float
        Log-probability of ``actions`` under the controller when it was drawn.
    entropy : float
        Sum of the entropies of the decisions' distributions.
    """

    genotype: Genotype
    actions: tuple[int, ...]
    log_prob: float
    entropy: float


class Controller(nn.Module):
    """LSTM policy over the genotypes of a cell-based search space.

    Parameters
    ----------
    ops : sequence of str
        The op subset; ``zero`` is left out, because a genotype edge always carries an op.
    num_nodes : int
        Intermediate nodes per cell.
    hidden_size : int
        Size of the LSTM state and of the embeddings.
    temperature : float
        The logits are divided by it; above 1 flattens the distributions.
    tanh_constant : float or None
        If set, the logits become ``tanh_constant * tanh(logits / temperature)``, which
        bounds them and keeps the controller from becoming certain too early (ENAS).
    seed : int
        Seed of the initial weights.
    """

    def __init__(self, ops: Sequence[str], num_nodes: int, *, hidden_size: int = 64,
                 temperature: float = 1.0, tanh_constant: float | None = None, seed: int = 0) -> None:
        super().__init__()
        self.ops = tuple(op for op in check_ops(ops) if op != "zero")
        if not self.ops:
            raise SleepnasError("invalid op subset: only 'zero'; the controller needs one or more other ops")
        if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
            raise SleepnasError(f"invalid num_nodes {num_nodes!r}: expected an integer >= 1")
        check_positive("--temperature", temperature)
        if tanh_constant is not None:
            check_positive("--tanh-constant", tanh_constant)
        self.num_nodes = num_nodes
        self.temperature = float(temperature)
        self.tanh_constant = None if tanh_constant is None else float(tanh_constant)
        max_inputs = num_nodes + 1

        generator_state = torch.get_rng_state()
        torch.manual_seed(seed)
        try:
            self.start = nn.Parameter(torch.zeros(1, hidden_size))
            self.lstm = nn.LSTMCell(hidden_size, hidden_size)
            self.input_embedding = nn.Embedding(max_inputs, hidden_size)
            self.op_embedding = nn.Embedding(len(self.ops), hidden_size)
            self.input_head = nn.Linear(hidden_size, max_inputs)
            self.op_head = nn.Linear(hidden_size, len(self.ops))
            nn.init.uniform_(self.start, -0.1, 0.1)
        finally:
            torch.set_rng_state(generator_state)

    @property
    def num_decisions(self) -> int:
        """Decisions per genotype: four per node, for the normal and the reduction cell."""
        return 2 * self.num_nodes * DECISIONS_PER_NODE

    def _logits(self, step: int, hidden: torch.Tensor, first_input: int | None) -> torch.Tensor:
        """Return the logits of decision ``step`` (masked where a value is not allowed)."""
        node = (step // DECISIONS_PER_NODE) % self.num_nodes
        kind = step % DECISIONS_PER_NODE
        if kind < 2:
            logits = self.input_head(hidden)[0, :node + 2]
        else:
            logits = self.op_head(hidden)[0]
        logits = logits / self.temperature
        if self.tanh_constant is not None:
            logits = self.tanh_constant * torch.tanh(logits)
        if kind == 1:
            # The second input of a node differs from its first.
            mask = torch.zeros_like(logits)
            mask[first_input] = -math.inf
            logits = logits + mask
        return logits

    def _embed(self, step: int, value: int) -> torch.Tensor:
        index = torch.tensor([value])
        if step % DECISIONS_PER_NODE < 2:
            return self.input_embedding(index)
        return self.op_embedding(index)

    def forward(self, actions: Sequence[int] | None = None, *,
                generator: torch.Generator | None = None) -> tuple[tuple[int, ...], torch.Tensor, torch.Tensor]:
        """Sample a child, or score the given ``actions``.

        Returns
        -------
        actions : tuple of int
        log_prob : torch.Tensor
            Scalar, differentiable in the controller's weights.
        entropy : torch.Tensor
            Scalar sum of the decisions' entropies, differentiable too.
        """
        if actions is not None:
            self._check_actions(actions)
        hidden_size = self.start.shape[1]
        state = (torch.zeros(1, hidden_size), torch.zeros(1, hidden_size))
        x = self.start
        chosen: list[int] = []
        log_prob = self.start.new_zeros(())
        entropy = self.start.new_zeros(())
        first_input: int | None = None
        for step in range(self.num_decisions):
            state = self.lstm(x, state)
            logits = self._logits(step, state[0], first_input)
            log_probs = torch.log_softmax(logits, dim=-1)
            probs = log_probs.exp()
            if actions is None:
                value = int(torch.multinomial(probs.detach(), 1, generator=generator))
            else:
                value = int(actions[step])
            log_prob = log_prob + log_probs[value]
            # A masked value has probability 0 and contributes 0, not 0 * -inf.
            finite = torch.where(probs > 0, log_probs, torch.zeros_like(log_probs))
            entropy = entropy - torch.sum(probs * finite)
            if step % DECISIONS_PER_NODE == 0:
                first_input = value
            chosen.append(value)
            x = self._embed(step, value)
        return tuple(chosen), log_prob, entropy

    def sample(self, generator: torch.Generator | None = None) -> ControllerSample:
        """Draw one child with ``generator`` (torch's global generator if None)."""
        with torch.no_grad():
            actions, log_prob, entropy = self(generator=generator)
        return ControllerSample(self.decode(actions), actions, float(log_prob), float(entropy))

    def log_prob_entropy(self, actions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the log-probability of ``actions`` and the entropy along them, differentiable."""
        _, log_prob, entropy = self(actions)
        return log_prob, entropy

    def decode(self, actions: Sequence[int]) -> Genotype:
        """Turn decisions into a genotype; each node's edges are ordered by input node."""
        self._check_actions(actions)
        cells = []
        per_cell = self.num_nodes * DECISIONS_PER_NODE
        for cell in range(2):
            edges: list[tuple[str, int]] = []
            for node in range(self.num_nodes):
                start = cell * per_cell + node * DECISIONS_PER_NODE
                first, second, op_first, op_second = actions[start:start + DECISIONS_PER_NODE]
                pair = sorted([(int(first), self.ops[op_first]), (int(second), self.ops[op_second])])
                edges.extend((op, j) for j, op in pair)
            cells.append(tuple(edges))
        return Genotype(cells[0], cells[1], self.num_nodes)

    def encode(self, genotype: Genotype) -> tuple[int, ...]:
        """Return the decisions that produce ``genotype`` with its edges in their stored order."""
        genotype.check(num_nodes=self.num_nodes, ops=self.ops, source="genotype")
        actions: list[int] = []
        for edges in (genotype.normal, genotype.reduce):
            for node in range(self.num_nodes):
                (op_first, first), (op_second, second) = edges[EDGES_PER_NODE * node:EDGES_PER_NODE * (node + 1)]
                if first == second:
                    raise SleepnasError(f"the genotype's node {node + 2} takes both edges from node "
                                        f"{first}: the controller samples two different input nodes")
                actions.extend([first, second, self.ops.index(op_first), self.ops.index(op_second)])
        return tuple(actions)

    def _check_actions(self, actions: Sequence[int]) -> None:
        if len(actions) != self.num_decisions:
            raise SleepnasError(f"invalid controller actions: {len(actions)} decisions, expected "
                                f"{self.num_decisions} (4 per node, {self.num_nodes} node(s) per cell type)")
        for step, value in enumerate(actions):
            node = (step // DECISIONS_PER_NODE) % self.num_nodes
            kind = step % DECISIONS_PER_NODE
            limit = node + 2 if kind < 2 else len(self.ops)
            if not 0 <= int(value) < limit or (kind == 1 and value == actions[step - 1]):
                raise SleepnasError(f"invalid controller action {value!r} at decision {step}: "
                                    f"expected 0 to {limit - 1}" + (", not the first input" if kind == 1 else ""))


class EMABaseline:
    """Exponential moving average of the rewards, the baseline of REINFORCE.

    ``b <- decay * b + (1 - decay) * mean_reward``; before the first update the
    baseline is the first mean reward itself.

    Parameters
    ----------
    decay : float
        In [0, 1); Zoph & Le (2017) and ENAS use values near 1 (0.95, 0.99).
    """

    def __init__(self, decay: float = 0.95) -> None:
        if not 0.0 <= decay < 1.0:
            raise SleepnasError(f"invalid --baseline-decay {decay!r}: expected a number in [0, 1)")
        self.decay = float(decay)
        self.value: float | None = None

    def update(self, reward: float) -> float:
        """Move the baseline toward ``reward``; return the new value."""
        if self.value is None:
            self.value = float(reward)
        else:
            self.value = self.decay * self.value + (1.0 - self.decay) * float(reward)
        return self.value


class ControllerTrainer:
    """REINFORCE with an EMA baseline and an entropy bonus, optimized with Adam.

    For the children ``k`` of one update, with rewards ``R_k`` and the baseline ``b``
    from the earlier updates (the first update's mean reward when there is none)::

        loss = -mean_k((R_k - b) * log p(a_k)) - entropy_coeff * mean_k(H(a_k))

    The baseline then moves toward the mean reward of this update.

    Parameters
    ----------
    controller : Controller
    lr : float
        Adam learning rate (3.5e-4 as in Zoph & Le 2017).
    baseline_decay : float
    entropy_coeff : float
        Weight of the entropy bonus; >= 0.
    """

    def __init__(self, controller: Controller, *, lr: float = CONTROLLER_LR, baseline_decay: float = 0.95,
                 entropy_coeff: float = 1e-4) -> None:
        check_positive("controller lr", lr)
        check_positive("--entropy-coeff", entropy_coeff, allow_zero=True)
        self.controller = controller
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=lr)
        self.baseline = EMABaseline(baseline_decay)
        self.entropy_coeff = float(entropy_coeff)

    def update(self, actions: Sequence[Sequence[int]], rewards: Sequence[float]) -> dict[str, float]:
        """Take one policy-gradient step on the children ``actions`` with their ``rewards``.

        Returns
        -------
        dict
            ``loss``, ``baseline`` (before the step), ``advantage`` (mean), ``entropy``
            (mean) and ``reward`` (mean).
        """
        if not actions or len(actions) != len(rewards):
            raise SleepnasError(f"a controller update needs one reward per child: got {len(actions)} "
                                f"children and {len(rewards)} rewards")
        mean_reward = sum(float(r) for r in rewards) / len(rewards)
        baseline = self.baseline.value if self.baseline.value is not None else mean_reward

        self.controller.train()
        self.optimizer.zero_grad(set_to_none=True)
        policy_terms, entropies = [], []
        for child_actions, reward in zip(actions, rewards):
            log_prob, entropy = self.controller.log_prob_entropy(child_actions)
            policy_terms.append((float(reward) - baseline) * log_prob)
            entropies.append(entropy)
        mean_entropy = torch.stack(entropies).mean()
        loss = -torch.stack(policy_terms).mean() - self.entropy_coeff * mean_entropy
        loss.backward()
        self.optimizer.step()

        self.baseline.update(mean_reward)
        return {"loss": float(loss.detach()), "baseline": baseline, "advantage": mean_reward - baseline,
                "entropy": float(mean_entropy.detach()), "reward": mean_reward}

    def state_dict(self) -> dict[str, Any]:
        """Return the controller, optimizer and baseline state (tensors and plain values)."""
        return {"controller": {k: v.detach().clone() for k, v in self.controller.state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "baseline": self.baseline.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`."""
        self.controller.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline.value = state["baseline"]
