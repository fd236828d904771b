"""The cost model: FLOPs and latency of a genotype, and their expected values for DARTS.

Latency comes from a latency table: each op at each shape it takes in the network,
plus the fixed parts (stem, cell preprocessing, classifier), exported alone to ONNX
and timed with onnxruntime on the device (`sleepnas.search.latency` builds it). A
genotype's predicted latency is the sum of its parts, with the session overhead that
every timed op model carries removed, and then a linear correction fitted on a few
whole networks measured on the same device.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.timing import CLOCKS, TABLE_FORMAT, table_key
from sleepnas.runtime.utils import atomic_write_json
from sleepnas.search.genotype import EDGES_PER_NODE, Genotype, edge_sources, num_edges
from sleepnas.search.network import (EdgeSignature, FixedPart, NetworkConfig, build_fixed_part,
                                     edge_signatures, fixed_parts)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    """Whole networks measured on the device, to fit the correction of the summed prediction.

    Attributes
    ----------
    network_id : str
        The network the samples belong to (`network_id` of its config).
    keys : tuple of tuple of str
        For each sample, the table keys of its parts, one per op or fixed part
        (a key appears as often as the network uses it).
    measured_ms : tuple of float
        Measured latency of each whole network at batch 1, in milliseconds.
    """

    network_id: str
    keys: tuple[tuple[str, ...], ...]
    measured_ms: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        return {"network_id": self.network_id, "keys": [list(k) for k in self.keys],
                "measured_ms": list(self.measured_ms)}


@dataclass
class LatencyTable:
    """Latencies of op models and fixed parts on one device, in milliseconds.

    A table is valid for one device, one onnxruntime version, one thread count and
    one clock (its `key`). Entries are named by `op_key` and `part_key`, so one table
    can serve several networks.

    Attributes
    ----------
    latency_ms : dict of str to float
        Median latency of each op model at batch 1.
    device : str
        Processor the table was measured on.
    onnxruntime : str
        onnxruntime version.
    threads : int
        Intra-op threads.
    clock : str
        ``"wall"`` or ``"cpu"``, the clock of the timed runs
        (`sleepnas.runtime.timing.time_session`).
    run_overhead_ms : float
        Median latency of a model that only copies its input: the cost of one
        ``session.run`` call, included in every entry.
    calibrations : list of Calibration
        Whole networks measured on the device, per network.
    warmup, repeats : int
        Runs per op model (untimed, timed).
    """

    latency_ms: dict[str, float]
    device: str = "unknown"
    onnxruntime: str = "unknown"
    threads: int = 1
    clock: str = "wall"
    run_overhead_ms: float = 0.0
    calibrations: list[Calibration] = field(default_factory=list)
    warmup: int = 0
    repeats: int = 0

    @property
    def key(self) -> str:
        """Cache key: device, onnxruntime version, thread count and clock."""
        return table_key(self.device, self.onnxruntime, self.threads, self.clock)

    def __contains__(self, key: str) -> bool:
        return key in self.latency_ms

    def __len__(self) -> int:
        return len(self.latency_ms)

    def __getitem__(self, key: str) -> float:
        try:
            return self.latency_ms[key]
        except KeyError:
            raise SleepnasError(f"the latency table ({self.device}, onnxruntime {self.onnxruntime}, "
                                f"{self.threads} threads) has no entry {key!r}: build it for this "
                                "network with `sleepnas cost build` or `cost export-ops` and "
                                "`cost measure`") from None

    def missing(self, keys: Iterable[str]) -> list[str]:
        """Return the keys of ``keys`` that the table lacks, in order, without repeats."""
        return list(dict.fromkeys(k for k in keys if k not in self.latency_ms))

    def calibration(self, network_id: str) -> Calibration | None:
        """Return the calibration of network ``network_id``, or None."""
        for calibration in self.calibrations:
            if calibration.network_id == network_id:
                return calibration
        return None

    def merge(self, other: LatencyTable) -> LatencyTable:
        """Return a table with the entries and calibrations of both; ``other`` wins on clashes.

        Raises
        ------
        SleepnasError
            If the two tables were measured on different devices, onnxruntime
            versions, thread counts or clocks.
        """
        if other.key != self.key:
            raise SleepnasError(f"cannot merge latency tables measured on different setups: "
                                f"{self.key!r} and {other.key!r}")
        replaced = {c.network_id for c in other.calibrations}
        calibrations = [c for c in self.calibrations if c.network_id not in replaced]
        return LatencyTable(latency_ms={**self.latency_ms, **other.latency_ms},
                            device=self.device, onnxruntime=self.onnxruntime,
                            threads=self.threads, clock=self.clock,
                            run_overhead_ms=other.run_overhead_ms,
                            calibrations=calibrations + list(other.calibrations),
                            warmup=other.warmup, repeats=other.repeats)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form that `from_dict` reads."""
        return {
            "format": TABLE_FORMAT,
            "device": self.device,
            "onnxruntime": self.onnxruntime,
            "threads": self.threads,
            "clock": self.clock,
            "batch_size": 1,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "run_overhead_ms": self.run_overhead_ms,
            "latency_ms": dict(sorted(self.latency_ms.items())),
            "calibrations": [c.to_dict() for c in self.calibrations],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "latency table") -> LatencyTable:
        """Build a table from `to_dict` output or the dict `measure_op_dir` returns.

        Only ``latency_ms`` is required, so a test can inject a fixed table:
        ``LatencyTable.from_dict({"latency_ms": {"op:conv_3x1:C16:L94:s1": 0.02}})``.

        Raises
        ------
        SleepnasError
            Naming ``source``, if a field is missing or has the wrong type, or a
            latency is negative or not finite.
        """
        try:
            return cls._parse(data)
        except (KeyError, TypeError, ValueError) as err:
            raise SleepnasError(f"invalid latency table {source}: {err}") from None

    @classmethod
    def _parse(cls, data: Mapping[str, Any]) -> LatencyTable:
        if not isinstance(data, Mapping):
            raise TypeError("expected a JSON object")
        if data.get("format", TABLE_FORMAT) != TABLE_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {TABLE_FORMAT}")
        if "latency_ms" not in data:
            raise KeyError("missing key 'latency_ms'")
        latency_ms = {str(k): _latency(v, k) for k, v in dict(data["latency_ms"]).items()}

        calibrations = []
        for raw in data.get("calibrations") or []:
            keys = tuple(tuple(str(k) for k in sample) for sample in raw["keys"])
            measured = tuple(_latency(v, "calibration") for v in raw["measured_ms"])
            if len(keys) != len(measured):
                raise ValueError("a calibration has different numbers of keys and measurements")
            calibrations.append(Calibration(str(raw["network_id"]), keys, measured))

        threads = data.get("threads", 1)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads {threads!r}, expected an integer >= 1")
        clock = data.get("clock", "wall")
        if clock not in CLOCKS:
            raise ValueError(f"clock {clock!r}, expected one of {', '.join(CLOCKS)}")
        return cls(latency_ms=latency_ms, device=str(data.get("device", "unknown")),
                   onnxruntime=str(data.get("onnxruntime", "unknown")), threads=threads,
                   clock=clock,
                   run_overhead_ms=_latency(data.get("run_overhead_ms", 0.0), "run_overhead_ms"),
                   calibrations=calibrations, warmup=int(data.get("warmup", 0)),
                   repeats=int(data.get("repeats", 0)))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON to ``path`` atomically."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        """Read a table written by `save` or by ``sleepnas cost measure``.

        Raises
        ------
        SleepnasError
            If the file is missing, is not JSON or is not a latency table.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SleepnasError(f"latency table not found: {path}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise SleepnasError(f"cannot read latency table {path}: {err}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SleepnasError(f"invalid latency table {path}: not valid JSON ({err.msg} at line "
                                f"{err.lineno}); measure it again with `sleepnas cost measure`") from None
        return cls.from_dict(data, source=str(path))


def _latency(value: Any, name: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"latency of {name!r} is {value!r}, expected a number of milliseconds")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"latency of {name!r} is {value!r}, expected a finite number >= 0")
    return float(value)


def op_key(op: str, channels: int, length: int, stride: int) -> str:
    """Return the table key of op ``op`` on input ``(1, channels, length)`` at ``stride``."""
    return f"op:{op}:C{channels}:L{length}:s{stride}"


def part_key(part: FixedPart, config: NetworkConfig) -> str:
    """Return the table key of a fixed part, from its kind and shapes.

    Parts of the same kind and shapes share a key, and so one entry, across cells
    and networks. The stem's key also names ``init_channels``, the width inside it.
    """
    shape_in = "x".join(map(str, part.input_shape))
    shape_out = "x".join(map(str, part.output_shape))
    if part.name == "stem":
        return f"stem:{shape_in}:I{config.init_channels}->{shape_out}"
    if part.name == "head":
        return f"head:{shape_in}->{shape_out}"
    return f"preprocess:{shape_in}->{shape_out}"


#: The config fields that set a network's shapes. The op subset and dropout do not, so a
#: calibration measured with every op serves a search over a subset too.
_SHAPE_FIELDS = ("in_channels", "n_times", "n_classes", "init_channels", "num_cells",
                 "num_nodes", "stem_multiplier")


def network_id(config: NetworkConfig) -> str:
    """Return a short hash of a network's shape; calibrations are stored per network."""
    shape = {name: getattr(config, name) for name in _SHAPE_FIELDS}
    text = json.dumps(shape, sort_keys=True)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


class OpCosts(NamedTuple):
    """Per-edge op costs of a supernet, in the layout of the arch parameters.

    ``latency_normal[e, o]`` is the latency in milliseconds that op ``o`` on edge ``e``
    adds to a derived network, summed over the normal cells. It is multiplied by the
    edge's chance to be kept, 2 / (inputs of its node). The reduction cells and the
    FLOPs have tensors of the same form. ``fixed_latency_ms`` and ``fixed_flops`` are
    the parts no genotype changes. Latencies are before the correction.
    """

    latency_normal: torch.Tensor
    latency_reduce: torch.Tensor
    flops_normal: torch.Tensor
    flops_reduce: torch.Tensor
    fixed_latency_ms: float
    fixed_flops: float


class CostModel:
    """FLOPs and latency of the genotypes of one network, and their expected values.

    The predicted latency of a genotype is ``scale * S + offset_ms``. ``S`` sums the
    table entries of the network's parts, the fixed ones and the op of every edge,
    each less the table's ``run_overhead_ms`` (the cost of one ``session.run`` call,
    which an op inside a network does not pay). ``scale`` and ``offset_ms`` are a
    least-squares fit of measured on summed latency over the table's calibration
    networks (whole random networks measured on the device). Without calibration
    they are 1 and 0.

    For DARTS, `expected_latency_ms` and `expected_flops` take the softmax of the
    arch parameters as op weights on every edge of the supernet. Two choices make
    the result comparable with a budget for the derived network:

    - an edge counts with weight 2 / (inputs of its node), the chance that it is one
      of the two edges its node keeps when every edge is as likely;
    - the ``zero`` op costs nothing, because it is the absence of the edge.

    Partial-channel supernets (PC-DARTS) price ops at the full channel count too:
    the cost is that of the derived network, which uses every channel.

    Parameters
    ----------
    config : NetworkConfig
        The network.
    latency_table : LatencyTable, optional
        Measured latencies of the network's parts on the target device; without it,
        only the FLOPs methods work. `sleepnas.search.latency.build_latency_table`
        measures and caches one for this machine.
    correction : bool
        Fit the correction on the table's calibration of this network, if it has one.
    """

    def __init__(self, config: NetworkConfig, latency_table: LatencyTable | None = None, *,
                 correction: bool = True) -> None:
        self.config = config
        self.latency_table = latency_table
        self._layout: dict[int, dict[tuple[int, int], EdgeSignature]] = {}
        for signature in edge_signatures(config):
            cell = self._layout.setdefault(signature.cell_index, {})
            cell[(signature.node, signature.from_node)] = signature
        self._fixed = fixed_parts(config)
        self._fixed_flops: float | None = None
        self._op_costs: OpCosts | None = None
        self.scale, self.offset_ms = 1.0, 0.0
        if latency_table is not None and correction:
            self.scale, self.offset_ms = self._fit_correction()

    # --- latency of a genotype ---------------------------------------------------

    def _table(self) -> LatencyTable:
        if self.latency_table is None:
            raise SleepnasError("no latency table: pass --latency-table FILE, or build one for this "
                                "machine with `sleepnas cost build`")
        return self.latency_table

    def _chosen_edges(self, genotype: Genotype) -> list[tuple[str, EdgeSignature]]:
        genotype.check(num_nodes=self.config.num_nodes, ops=self.config.ops)
        chosen = []
        for cell_index in sorted(self._layout):
            cell = self._layout[cell_index]
            reduction = next(iter(cell.values())).reduction
            edges = genotype.reduce if reduction else genotype.normal
            for n, (op, j) in enumerate(edges):
                node = n // EDGES_PER_NODE + 2
                chosen.append((op, cell[(node, j)]))
        return chosen

    def part_keys(self, genotype: Genotype) -> list[str]:
        """Return the table keys of every part of the genotype's network, with repeats.

        The fixed parts come first, then the op of each edge, cell by cell. A
        ``zero`` op has no key, because it adds nothing to a network.
        """
        keys = [part_key(part, self.config) for part in self._fixed]
        for op, s in self._chosen_edges(genotype):
            if op != "zero":
                keys.append(op_key(op, s.C, s.L, s.stride))
        return keys

    def entry_ms(self, key: str) -> float:
        """Return the table entry ``key`` less the run overhead, at least 0."""
        table = self._table()
        return max(table[key] - table.run_overhead_ms, 0.0)

    def summed_latency_ms(self, genotype: Genotype) -> float:
        """Return the sum of the genotype's parts in the table, before the correction."""
        return float(sum(self.entry_ms(key) for key in self.part_keys(genotype)))

    def genotype_latency_ms(self, genotype: Genotype) -> float:
        """Return the predicted latency of the genotype's network at batch 1, in milliseconds."""
        return self.scale * self.summed_latency_ms(genotype) + self.offset_ms

    def _fit_correction(self) -> tuple[float, float]:
        table = self._table()
        calibration = table.calibration(network_id(self.config))
        if calibration is None or not calibration.measured_ms:
            if table.repeats > 0:
                logger.warning("the latency table has no calibration for network %s, so predicted "
                               "latencies are plain sums of op latencies; measure one with "
                               "`sleepnas cost build` or `cost export-ops` and `cost measure`",
                               network_id(self.config))
            return 1.0, 0.0
        summed = np.array([sum(self.entry_ms(k) for k in keys) for keys in calibration.keys])
        measured = np.asarray(calibration.measured_ms)

        if len(summed) >= 3 and np.ptp(summed) > 0:
            scale, offset_ms = np.polyfit(summed, measured, 1)
            if scale > 0:
                logger.debug("latency correction of network %s: %.4f * sum + %.4f ms",
                             network_id(self.config), scale, offset_ms)
                return float(scale), float(offset_ms)

        # Too few or degenerate samples for a line: keep the ratio only.
        return float(measured.sum() / max(summed.sum(), 1e-12)), 0.0

    # --- FLOPs --------------------------------------------------------------------

    def fixed_flops(self) -> float:
        """Return the FLOPs of the parts no genotype changes (stem, preprocessing, head)."""
        if self._fixed_flops is None:
            from sleepnas.search.flops import count_flops

            self._fixed_flops = float(sum(
                count_flops(build_fixed_part(self.config, part.name), (1, *part.input_shape))
                for part in self._fixed))
        return self._fixed_flops

    def genotype_flops(self, genotype: Genotype) -> int:
        """Return the FLOPs of the genotype's network at batch 1 (one multiply-add = one FLOP)."""
        from sleepnas.search.flops import op_flops

        total = self.fixed_flops()
        for op, s in self._chosen_edges(genotype):
            total += op_flops(op, s.C, s.L, s.stride)
        return int(round(total))

    # --- expected cost for DARTS -------------------------------------------------

    def op_cost_tensors(self) -> OpCosts:
        """Return the per-edge op costs that the expected costs weight; see `OpCosts`.

        Latencies need the latency table; without one they are zero tensors, so that
        `expected_flops` works alone.
        """
        if self._op_costs is None:
            self._op_costs = self._build_op_costs()
        return self._op_costs

    def _build_op_costs(self) -> OpCosts:
        from sleepnas.search.flops import op_flops

        ops = self.config.ops
        sources = edge_sources(self.config.num_nodes)
        shape = (len(sources), len(ops))
        latency = {False: np.zeros(shape), True: np.zeros(shape)}
        flops = {False: np.zeros(shape), True: np.zeros(shape)}
        for cell in self._layout.values():
            for e, (node, j) in enumerate(sources):
                s = cell[(node, j)]
                keep = EDGES_PER_NODE / node  # node n has n inputs, nodes 0 to n - 1
                for o, op in enumerate(ops):
                    if op == "zero":
                        continue
                    flops[s.reduction][e, o] += keep * op_flops(op, s.C, s.L, s.stride)
                    if self.latency_table is not None:
                        latency[s.reduction][e, o] += keep * self.entry_ms(
                            op_key(op, s.C, s.L, s.stride))

        fixed_latency_ms = 0.0
        if self.latency_table is not None:
            fixed_latency_ms = sum(self.entry_ms(part_key(p, self.config)) for p in self._fixed)
        as_tensor = lambda array: torch.as_tensor(array, dtype=torch.float64)  # noqa: E731
        return OpCosts(as_tensor(latency[False]), as_tensor(latency[True]),
                       as_tensor(flops[False]), as_tensor(flops[True]),
                       float(fixed_latency_ms), self.fixed_flops())

    def _check_alphas(self, name: str, alphas: torch.Tensor) -> None:
        expected = (num_edges(self.config.num_nodes), len(self.config.ops))
        if tuple(alphas.shape) != expected:
            raise SleepnasError(f"invalid {name} of shape {tuple(alphas.shape)}: expected {expected} "
                                f"for {self.config.num_nodes} nodes and {len(self.config.ops)} ops")

    def _expected(self, alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor,
                  cost_normal: torch.Tensor, cost_reduce: torch.Tensor) -> torch.Tensor:
        self._check_alphas("alphas_normal", alphas_normal)
        self._check_alphas("alphas_reduce", alphas_reduce)
        dtype, device = alphas_normal.dtype, alphas_normal.device
        weights_normal = torch.softmax(alphas_normal, dim=-1)
        weights_reduce = torch.softmax(alphas_reduce, dim=-1)
        return ((weights_normal * cost_normal.to(device=device, dtype=dtype)).sum()
                + (weights_reduce * cost_reduce.to(device=device, dtype=dtype)).sum())

    def expected_latency_ms(self, alphas_normal: torch.Tensor,
                            alphas_reduce: torch.Tensor) -> torch.Tensor:
        """Return the expected latency of the supernet in milliseconds, differentiable in the alphas.

        Parameters
        ----------
        alphas_normal, alphas_reduce : Tensor, shape (num_edges, len(config.ops))
            Arch parameters (logits), rows in the order of `edge_sources`.

        Returns
        -------
        Tensor
            A scalar: ``scale * (fixed + sum over edges and ops of softmax weight *
            cost) + offset_ms``, with the edge weights of `OpCosts`.
        """
        self._table()
        costs = self.op_cost_tensors()
        summed = self._expected(alphas_normal, alphas_reduce, costs.latency_normal,
                                costs.latency_reduce) + costs.fixed_latency_ms
        return self.scale * summed + self.offset_ms

    def expected_flops(self, alphas_normal: torch.Tensor,
                       alphas_reduce: torch.Tensor) -> torch.Tensor:
        """Return the expected FLOPs of the supernet, differentiable in the alphas.

        The same sum as `expected_latency_ms`, over op FLOPs, without a correction.
        """
        costs = self.op_cost_tensors()
        return self._expected(alphas_normal, alphas_reduce, costs.flops_normal,
                              costs.flops_reduce) + costs.fixed_flops
