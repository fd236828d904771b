"""Export a run directory's model to the ONNX file a device runs.

The file has one input ``windows`` (batch, n_chans, n_times), float32 and already
normalized, and one output ``logits`` (batch, n_classes), with a dynamic batch axis
named ``batch``. Its metadata carries everything the runtime needs: the window spec,
the stage names, the genotype, the model name, the test metrics and the versions.

The exporter is torch's dynamo-based one (``torch.onnx.export(..., dynamo=True)``,
torch 2.13), because the TorchScript exporter is deprecated in that release. It
exports LSTM as one ONNX ``LSTM`` node, which the INT8 quantizer needs. Multi-head
attention becomes plain MatMul and Softmax nodes. Both keep a dynamic batch axis.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sleepnas.runtime.errors import SleepnasError, check_option, check_positive
from sleepnas.runtime.spec import WindowSpec
from sleepnas.runtime.utils import atomic_write_bytes

from .parity import DEFAULT_PARITY_WINDOWS, DEFAULT_TOLERANCE, ParityReport, check_parity, sample_windows

if TYPE_CHECKING:
    from .quantize import QuantizationReport

logger = logging.getLogger(__name__)

#: Value of ``sleepnas.format``: bump it when the input, output or metadata change meaning.
FORMAT_VERSION = "1"

#: Metadata keys of a sleepnas ONNX file, all with string values.
METADATA_KEYS = ("sleepnas.format", "sleepnas.window_spec", "sleepnas.stages", "sleepnas.genotype",
                 "sleepnas.model", "sleepnas.metrics", "sleepnas.versions")

#: The dynamo exporter writes opset 18 or newer; it silently raises lower requests to 18.
MIN_OPSET = 18

#: Test metrics copied from ``results.json`` into the metadata.
_METRIC_KEYS = ("accuracy", "macro_f1", "kappa", "per_stage_f1")

#: Files a run directory needs for export.
_RUN_FILES = ("config.json", "window_spec.json", "weights.pt")


@dataclass(frozen=True)
class ExportReport:
    """Files an export wrote and the checks it ran.

    Attributes
    ----------
    output : Path
        The ONNX file written (the INT8 model when quantized).
    opset : int
        ONNX opset of the default domain.
    simplified : bool
        Whether the onnxslim-simplified graph was kept; False when not requested or
        when the simplified graph failed the parity check and the plain one passed.
    n_nodes : int
        Nodes in the written float graph.
    model_bytes : int
        Size of ``output`` in bytes.
    parity : ParityReport
        The float model against torch.
    quantization : QuantizationReport or None
        Figures of the INT8 model, when one was made.
    float_output : Path or None
        Where the float model was written beside an INT8 one.
    """

    output: Path
    opset: int
    simplified: bool
    n_nodes: int
    model_bytes: int
    parity: ParityReport
    quantization: QuantizationReport | None = None
    float_output: Path | None = None

    def to_dict(self) -> dict:
        """Return the report as JSON-ready values."""
        data = {"output": str(self.output), "opset": self.opset, "simplified": self.simplified,
                "n_nodes": self.n_nodes, "model_bytes": self.model_bytes,
                "parity": self.parity.to_dict()}
        if self.quantization is not None:
            data["float_output"] = str(self.float_output)
            data["quantization"] = self.quantization.to_dict()
        return data


def check_run_dir(run_dir: str | Path) -> Path:
    """Raise a `SleepnasError` unless ``run_dir`` has the files an export needs."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SleepnasError(f"run directory {run_dir} not found: give the --save-dir of a "
                            f"'sleepnas train' or 'sleepnas search' run")
    missing = [name for name in _RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        hint = " (the run has not finished training)" if "weights.pt" in missing else ""
        raise SleepnasError(f"run directory {run_dir} has no {', '.join(missing)}{hint}: "
                            f"expected {', '.join(_RUN_FILES)}")
    return run_dir


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SleepnasError(f"invalid JSON in {path}: {err}") from None


def _test_metrics(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    if not path.is_file():
        logger.warning("%s has no results.json: the ONNX metadata will carry no test metrics", run_dir)
        return {}
    results = _read_json(path)
    results = results if isinstance(results, dict) else {}
    source = results.get("test") if isinstance(results.get("test"), dict) else results
    return {key: source[key] for key in _METRIC_KEYS if key in source}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import onnx
    import onnxruntime
    import torch

    try:
        sleepnas_version = version("sleepnas")
    except PackageNotFoundError:
        sleepnas_version = "unknown"
    return {"sleepnas": sleepnas_version, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def build_metadata(spec: WindowSpec, *, model_name: str, genotype_json: str,
                   metrics: dict) -> dict[str, str]:
    """Return the ``sleepnas.*`` metadata of an ONNX file, every value a string.

    Only the window spec, stage names, architecture, test metrics and versions go in:
    nothing from a recording's header, so nothing identifies a patient or a night.
    """
    if spec.scale is None:
        raise SleepnasError("the run's window spec has no fitted normalization scale: "
                            "the run did not finish training")
    return {
        "sleepnas.format": FORMAT_VERSION,
        "sleepnas.window_spec": spec.to_json(),
        "sleepnas.stages": json.dumps(list(spec.stage_names)),
        "sleepnas.genotype": genotype_json,
        "sleepnas.model": model_name,
        "sleepnas.metrics": json.dumps(metrics, sort_keys=True),
        "sleepnas.versions": json.dumps(_versions(), sort_keys=True),
    }


def set_metadata(model_proto, metadata: dict[str, str]) -> None:
    """Replace the ``metadata_props`` of an ONNX ``ModelProto`` with ``metadata``."""
    del model_proto.metadata_props[:]
    for key, value in metadata.items():
        entry = model_proto.metadata_props.add()
        entry.key = key
        entry.value = value


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's warnings and log lines, which are about torch internals."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export",
                                                     "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(model, spec: WindowSpec, *, opset: int | None = None):
    """Export a torch model to an ONNX ``ModelProto`` with the sleepnas input and output.

    Parameters
    ----------
    model : torch.nn.Module
        A model in eval mode that maps (batch, n_chans, n_times) to (batch, n_classes).
    spec : WindowSpec
        Gives the input's channel count and length.
    opset : int, optional
        ONNX opset, at least `MIN_OPSET`; the exporter's default when ``None``.

    Returns
    -------
    onnx.ModelProto
        With weights inside the proto (no external data file) and checked by
        ``onnx.checker`` with full shape inference.
    """
    import onnx
    import torch

    max_opset = onnx.defs.onnx_opset_version()
    if opset is not None and not MIN_OPSET <= opset <= max_opset:
        raise SleepnasError(f"invalid --opset {opset}: expected {MIN_OPSET} to {max_opset}")

    # Batch 2, not 1: torch.export specializes a dimension whose example size is 1.
    example = torch.zeros(2, spec.n_chans, spec.n_times)
    dynamic_shapes = ({0: torch.export.Dim("batch")},)
    try:
        with _quiet_exporter(), torch.inference_mode(False):
            program = torch.onnx.export(model.eval(), (example,), None, dynamo=True, opset_version=opset,
                                        input_names=["windows"], output_names=["logits"],
                                        dynamic_shapes=dynamic_shapes, verbose=False, report=False)
    except torch.onnx.OnnxExporterError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SleepnasError(f"exporting the model to ONNX failed: {first_line}") from err
    proto = program.model_proto

    written = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset is not None and written != opset:
        raise SleepnasError(f"invalid --opset {opset}: the exporter wrote opset {written} instead")
    onnx.checker.check_model(proto, full_check=True)
    return proto


def simplify_onnx(model_proto):
    """Simplify a graph with onnxslim (constant folding, dead and duplicate node removal).

    The caller checks parity on the result, because a rewrite that changed the
    numbers would otherwise go unnoticed.
    """
    import onnx
    import onnxslim

    with _quiet_exporter():
        simplified = onnxslim.slim(model_proto)
    onnx.checker.check_model(simplified, full_check=True)
    return simplified


def _load_run_model(run_dir: Path):
    """Rebuild the model, spec and config of a run through the search package."""
    from sleepnas.search.models import build_model

    return build_model(run_dir)


def _genotype_json(run_dir: Path, model_name: str) -> str:
    path = run_dir / "genotype.json"
    if model_name != "genotype":
        return ""
    if not path.is_file():
        raise SleepnasError(f"run directory {run_dir} has no genotype.json, but its config.json "
                            f"names model 'genotype'")
    return json.dumps(_read_json(path), sort_keys=True)


def _export_checked(model, spec: WindowSpec, metadata: dict[str, str], sample, *, opset: int | None,
                    simplify: bool, tolerance: float) -> tuple[bytes, object, ParityReport, bool]:
    """Export and simplify a model, keeping the simplified graph only if it passes parity.

    Returns the serialized model, its proto, its parity report and whether it is the
    simplified graph. The report may have failed: the caller raises.
    """
    proto = export_onnx(model, spec, opset=opset)
    set_metadata(proto, metadata)

    plain = proto.SerializeToString()
    if not simplify:
        return plain, proto, check_parity(model, plain, sample, tolerance=tolerance), False

    simplified = simplify_onnx(proto)
    set_metadata(simplified, metadata)
    data = simplified.SerializeToString()
    parity = check_parity(model, data, sample, tolerance=tolerance)
    if parity.passed:
        return data, simplified, parity, True

    plain_parity = check_parity(model, plain, sample, tolerance=tolerance)
    if plain_parity.passed:
        logger.warning("the simplified graph failed the parity check (%s): keeping the plain graph",
                       parity.describe())
    return plain, proto, plain_parity, False


def export_run(run_dir: str | Path, output: str | Path, *, opset: int | None = None,
               parity_windows: int = DEFAULT_PARITY_WINDOWS, tolerance: float = DEFAULT_TOLERANCE,
               simplify: bool = True, quantize: str | None = None,
               data_path: str | Path | None = None, seed: int = 0,
               cache_dir: str | Path | None = None) -> ExportReport:
    """Export a run's model to ONNX, check it against torch, and write it atomically.

    Parameters
    ----------
    run_dir : path
        A finished run directory (``config.json``, ``window_spec.json``, ``weights.pt``).
    output : path
        The ONNX file to write. With ``quantize="int8"`` it receives the INT8 model,
        and the float model is written beside it as ``<stem>.float.onnx`` (a stem
        ending in ``.int8`` loses that ending, so ``m.int8.onnx`` gets ``m.float.onnx``).
    opset : int, optional
        ONNX opset (at least 18); the exporter's default when ``None``.
    parity_windows : int
        Windows of the run's test subjects (or random ones) compared with torch.
    tolerance : float
        Largest absolute logit difference accepted; see `DEFAULT_TOLERANCE`.
    simplify : bool
        Simplify the graph with onnxslim, kept only if it passes the parity check.
    quantize : {None, "int8"}
        Also quantize to INT8 (see `sleepnas.export.quantize.quantize_int8`).
    data_path : path, optional
        Folder of recordings for parity and calibration windows; the run's own by default.
    seed : int
        Seed of the random windows used when no recordings can be read.
    cache_dir : path, optional
        Cache folder of the window store; the default cache when ``None``.

    Returns
    -------
    ExportReport

    Raises
    ------
    SleepnasError
        For a run directory without weights, an invalid option, a failed export or a
        parity failure; the message names both parity figures. Nothing is written then.
    """
    run_dir = check_run_dir(run_dir)
    output = Path(output)
    if output.is_dir():
        raise SleepnasError(f"invalid -o {output}: it is a directory, expected an .onnx file path")
    check_positive("tolerance", tolerance)
    check_positive("parity_windows", parity_windows)
    check_option("--quantize", quantize, (None, "int8"))

    model, spec, config = _load_run_model(run_dir)
    model_name = str(config.get("model", "genotype"))
    metadata = build_metadata(spec, model_name=model_name, genotype_json=_genotype_json(run_dir, model_name),
                              metrics=_test_metrics(run_dir))
    sample = sample_windows(run_dir, spec, n_windows=parity_windows, data_path=data_path, seed=seed,
                            cache_dir=cache_dir)

    data, proto, parity, simplified = _export_checked(model, spec, metadata, sample, opset=opset,
                                                      simplify=simplify, tolerance=tolerance)
    if not parity.passed:
        raise SleepnasError(f"parity check failed for {run_dir}: {parity.describe()}; "
                            f"the ONNX model does not compute what the torch model does")
    logger.debug("parity: %s", parity.describe())
    opset_written = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))

    if quantize is None:
        atomic_write_bytes(output, data)
        return ExportReport(output=output, opset=opset_written, simplified=simplified,
                            n_nodes=len(proto.graph.node), model_bytes=len(data), parity=parity)

    from .quantize import quantize_int8

    calibration = sample_windows(run_dir, spec, split="train", n_windows=parity_windows,
                                 data_path=data_path, seed=seed + 1, cache_dir=cache_dir)
    int8_data, quantization = quantize_int8(data, calibration, sample, metadata=metadata)
    float_output = output.with_name(f"{output.stem.removesuffix('.int8')}.float.onnx")
    atomic_write_bytes(float_output, data)
    try:
        atomic_write_bytes(output, int8_data)
    except BaseException:
        float_output.unlink(missing_ok=True)
        raise
    return ExportReport(output=output, opset=opset_written, simplified=simplified,
                        n_nodes=len(proto.graph.node), model_bytes=len(int8_data), parity=parity,
                        quantization=quantization, float_output=float_output)
