"""Load a sleepnas ONNX model into an onnxruntime session and run it on windows.

A sleepnas model has one float32 input ``windows`` of shape (batch, n_chans, n_times),
already normalized by its window spec, and one float32 output ``logits`` of shape
(batch, n_classes). Its ``metadata_props`` carry the window spec and the stage names
under ``sleepnas.*`` keys, so the runtime needs nothing beside the file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import SleepnasError, check_positive
from .spec import WindowSpec

logger = logging.getLogger(__name__)

INPUT_NAME = "windows"
OUTPUT_NAME = "logits"
FORMAT_VERSION = "1"

#: Metadata keys the runtime cannot score without.
REQUIRED_KEYS: tuple[str, ...] = ("sleepnas.format", "sleepnas.window_spec", "sleepnas.stages")
#: Metadata keys an exported model carries for information; missing ones are read as empty.
OPTIONAL_KEYS: tuple[str, ...] = ("sleepnas.genotype", "sleepnas.model", "sleepnas.metrics",
                                  "sleepnas.versions")
_JSON_KEYS = ("sleepnas.metrics", "sleepnas.versions")


@dataclass
class SleepModel:
    """A sleepnas ONNX model ready to score windows.

    Attributes
    ----------
    path : Path
        The ONNX file.
    spec : WindowSpec
        Channels, rate, window length, scheme and normalization the model expects.
    stage_names : tuple of str
        Class names in the order of the logits.
    metadata : dict
        The ``sleepnas.*`` metadata without the prefix: ``format``, ``window_spec``
        and ``stages`` as stored, ``genotype`` and ``model`` as strings, ``metrics``
        and ``versions`` parsed from JSON (empty dicts when absent).
    providers : list of str
        Execution providers of the session, in priority order.
    session : onnxruntime.InferenceSession
    """

    path: Path
    spec: WindowSpec
    stage_names: tuple[str, ...]
    metadata: dict
    providers: list[str]
    session: object = field(repr=False)

    @property
    def n_classes(self) -> int:
        return len(self.stage_names)

    def predict_logits(self, windows: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Run the model on normalized windows in batches.

        Parameters
        ----------
        windows : ndarray, shape (n_windows, n_chans, n_times)
            Windows already normalized with ``spec.normalize``.
        batch_size : int
            Windows per onnxruntime call.

        Returns
        -------
        ndarray of float32, shape (n_windows, n_classes)
        """
        check_positive("--batch-size", batch_size)
        windows = np.asarray(windows, dtype=np.float32)
        expected = (self.spec.n_chans, self.spec.n_times)
        if windows.ndim != 3 or windows.shape[1:] != expected:
            raise SleepnasError(
                f"windows of shape {windows.shape} do not fit model {self.path.name}: expected "
                f"(n_windows, {expected[0]}, {expected[1]}), i.e. {expected[0]} channels "
                f"x {self.spec.window_s:g} s at {self.spec.sfreq:g} Hz"
            )

        logits = np.empty((len(windows), self.n_classes), dtype=np.float32)
        for start in range(0, len(windows), int(batch_size)):
            batch = np.ascontiguousarray(windows[start:start + int(batch_size)])
            (out,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})
            logits[start:start + len(batch)] = out
        return logits

    def predict_proba(self, windows: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Return stage probabilities (softmax of the logits) of normalized windows."""
        return softmax(self.predict_logits(windows, batch_size))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, computed stably in float64 and returned as float32."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def resolve_providers(providers: str | Sequence[str] | None) -> list[str]:
    """Resolve execution provider names to the names onnxruntime uses.

    A name matches ignoring case, and the suffix ``ExecutionProvider`` may be left
    out (``cpu`` is ``CPUExecutionProvider``). ``None`` means the CPU provider.
    An unknown or unavailable name raises a `SleepnasError` listing the available ones.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [providers]

    resolved = []
    for name in providers:
        key = name.strip().lower()
        matches = [p for p in available
                   if key in (p.lower(), p.lower().removesuffix("executionprovider"))]
        if not matches:
            raise SleepnasError(
                f"execution provider {name!r} is not available in this onnxruntime "
                f"{ort.__version__}: expected one of {', '.join(available)}"
            )
        resolved.append(matches[0])
    return resolved


def load_model(path: str | os.PathLike, *, threads: int | None = None,
               providers: str | Sequence[str] | None = None) -> SleepModel:
    """Open a sleepnas ONNX model with onnxruntime.

    Parameters
    ----------
    path : path-like
        The ONNX file written by ``sleepnas export``.
    threads : int, optional
        Threads onnxruntime uses inside one operator; ``None`` lets it choose.
    providers : str or list of str, optional
        Execution providers by name, for example ``"cpu"`` or
        ``["CUDAExecutionProvider", "CPUExecutionProvider"]``; default the CPU.

    Returns
    -------
    SleepModel

    Raises
    ------
    SleepnasError
        The file is missing or not a valid ONNX file, a ``sleepnas.*`` metadata key is
        missing or invalid, the input or output does not match the window spec, or a
        provider is not available.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise SleepnasError(f"model file {path} not found: expected an ONNX file from sleepnas export")
    if threads is not None:
        check_positive("--threads", threads)
    provider_names = resolve_providers(providers)

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=provider_names)
    except Exception as err:  # onnxruntime raises its own classes, all derived from Exception
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SleepnasError(f"cannot load model {path}: not a valid ONNX file ({reason})") from None

    metadata = _read_metadata(session, path)
    spec = metadata["spec"]
    _check_io(session, spec, len(metadata["stages"]), path)
    logger.debug("loaded %s with providers %s", path.name, session.get_providers())
    return SleepModel(path=path, spec=spec, stage_names=tuple(metadata["stages"]),
                      metadata=metadata["public"], providers=list(session.get_providers()),
                      session=session)


def _read_metadata(session, path: Path) -> dict:
    props = dict(session.get_modelmeta().custom_metadata_map)
    for key in REQUIRED_KEYS:
        if key not in props:
            raise SleepnasError(
                f"{path} is not a sleepnas model: metadata key {key!r} is missing "
                f"(a sleepnas model carries {', '.join(REQUIRED_KEYS)}; export it with sleepnas export)"
            )
    if props["sleepnas.format"] != FORMAT_VERSION:
        raise SleepnasError(
            f"{path} has sleepnas.format {props['sleepnas.format']!r}: this runtime reads "
            f"format {FORMAT_VERSION!r}"
        )

    try:
        spec = WindowSpec.from_json(props["sleepnas.window_spec"])
    except (SleepnasError, TypeError) as err:
        raise SleepnasError(f"{path} has an invalid sleepnas.window_spec: {err}") from None
    if spec.scale is None:
        raise SleepnasError(f"{path} has a window spec without a normalization scale: "
                            f"export the model from a trained run")
    stages = _parse_json_value(props, "sleepnas.stages", path)
    if list(stages) != list(spec.stage_names):
        raise SleepnasError(
            f"{path} has sleepnas.stages {stages} but its window spec scheme {spec.scheme!r} "
            f"has stages {list(spec.stage_names)}: expected the same list"
        )

    public = {key.removeprefix("sleepnas."): props[key] for key in REQUIRED_KEYS}
    for key in OPTIONAL_KEYS:
        short = key.removeprefix("sleepnas.")
        if key in _JSON_KEYS:
            public[short] = _parse_json_value(props, key, path) if props.get(key) else {}
        else:
            public[short] = props.get(key, "")
    return {"spec": spec, "stages": stages, "public": public}


def _parse_json_value(props: dict, key: str, path: Path):
    try:
        return json.loads(props[key])
    except json.JSONDecodeError as err:
        raise SleepnasError(f"{path} has invalid JSON in metadata key {key!r}: {err}") from None


def _check_io(session, spec: WindowSpec, n_classes: int, path: Path) -> None:
    inputs = session.get_inputs()
    outputs = session.get_outputs()
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        names = [i.name for i in inputs]
        raise SleepnasError(f"{path} has inputs {names}: a sleepnas model has one input {INPUT_NAME!r}")
    if OUTPUT_NAME not in [o.name for o in outputs]:
        names = [o.name for o in outputs]
        raise SleepnasError(f"{path} has outputs {names}: a sleepnas model has an output {OUTPUT_NAME!r}")

    # Symbolic dimensions (the batch axis) are strings or None; fixed ones must match.
    expected_in = (None, spec.n_chans, spec.n_times)
    if not _shape_fits(inputs[0].shape, expected_in):
        raise SleepnasError(
            f"{path} takes input of shape {inputs[0].shape} but its window spec gives "
            f"(batch, {spec.n_chans}, {spec.n_times}): {spec.n_chans} channels x "
            f"{spec.window_s:g} s at {spec.sfreq:g} Hz"
        )
    output = next(o for o in outputs if o.name == OUTPUT_NAME)
    if not _shape_fits(output.shape, (None, n_classes)):
        raise SleepnasError(f"{path} returns logits of shape {output.shape}: expected "
                            f"(batch, {n_classes}) for stages of scheme {spec.scheme!r}")


def _shape_fits(shape, expected: tuple) -> bool:
    if shape is None or len(shape) != len(expected):
        return False
    return all(want is None or not isinstance(got, int) or got == want
               for got, want in zip(shape, expected))
