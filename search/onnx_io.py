"""The small torch-to-ONNX helper the cost model times op models and whole networks with."""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from sleepnas.runtime.utils import atomic_write_bytes

logger = logging.getLogger(__name__)

#: ONNX opset of the op models and of the networks the cost model times.
OPSET = 17


def export_onnx(module: nn.Module, example_inputs: Sequence[torch.Tensor],
                path: str | os.PathLike, *, input_names: Sequence[str] | None = None,
                output_names: Sequence[str] | None = None, dynamic_batch: bool = False) -> None:
    """Export ``module`` in eval mode to an ONNX file, written atomically.

    Uses torch's TorchScript-based exporter (``dynamo=False``). It maps ``nn.LSTM`` to
    the ONNX ``LSTM`` op, as the ``torch.export``-based exporter of the deliverable
    model does, and it is several times faster. On a 2-core AMD EPYC machine shared
    with other jobs (torch 2.13, onnxruntime 1.32), one default network took 5 to 15 s
    to export against 40 to 60 s, and the two files of one network ran within about
    6 % of each other (CPU time of one thread, batch 1, 7 networks).

    NOTE: torch 2.13 deprecates the TorchScript-based exporter; a torch without it
    needs ``dynamo=True`` here.

    Parameters
    ----------
    module : nn.Module
        The module; it is switched to eval mode.
    example_inputs : sequence of Tensor
        One example tensor per input; their shapes are the fixed shapes of the file.
    path : path-like
        Output file.
    input_names, output_names : sequence of str, optional
        Names of the graph inputs and outputs; default ``x0, x1, ...`` and ``y``.
    dynamic_batch : bool
        Make the first axis of every input and output dynamic, named ``batch``.
    """
    module = module.eval()
    input_names = list(input_names or [f"x{i}" for i in range(len(example_inputs))])
    output_names = list(output_names or ["y"])
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: "batch"} for name in input_names + output_names}

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter warns that it is the legacy one and about LSTM batch sizes; neither
        # matters for a file that is only timed.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(example_inputs), buffer, dynamo=False,
                          opset_version=OPSET, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes,
                          do_constant_folding=True)
    atomic_write_bytes(path, buffer.getvalue())
