"""``sleepnas export``: write a run's model as the ONNX file a device runs."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="ONNX file to write. With --quantize int8 it receives the INT8 model and the "
                   "float model goes beside it as <name>.float.onnx.")
@click.option("--opset", type=int, default=None,
              help="ONNX opset, 18 or newer.  [default: the exporter's]")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Also quantize: Conv statically (calibrated on training windows), LSTM and MatMul "
                   "dynamically; node types that are not at least 3 % faster in INT8 stay in float.")
@click.option("--no-simplify", is_flag=True,
              help="Keep the exporter's graph instead of the onnxslim-simplified one.")
@click.option("--data-path", "--data_path", "data_path", type=click.Path(path_type=Path), default=None,
              help="Folder of recordings for the parity and calibration windows.  "
                   "[default: the run's data path; seeded random windows when it is unavailable]")
@click.option("--parity-windows", type=click.IntRange(min=1), default=64, show_default=True,
              help="Test windows on which ONNX and torch logits are compared.")
@click.option("--tolerance", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              help="Largest absolute logit difference accepted between ONNX and torch.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache folder of the window store.  [default: $SLEEPNAS_CACHE or ~/.cache/sleepnas]")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
def export(run_dir: Path, output: Path, opset: int | None, quantize: str | None, no_simplify: bool,
           data_path: Path | None, parity_windows: int, tolerance: float, cache_dir: Path | None,
           as_json: bool) -> None:
    """Export the model of RUN_DIR to ONNX, with its window spec and metrics as metadata.

    The export is checked with onnx.checker and against torch on real windows (the
    run's test subjects); the file is written only if that parity check passes.
    """
    from sleepnas.export.onnx_export import export_run

    report = export_run(run_dir, output, opset=opset, parity_windows=parity_windows,
                        tolerance=tolerance, simplify=not no_simplify, quantize=quantize,
                        data_path=data_path, cache_dir=cache_dir)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return

    click.echo(f"wrote {report.output} ({report.model_bytes} bytes, opset {report.opset}, "
               f"{report.n_nodes} nodes{', simplified' if report.simplified else ''})")
    click.echo(f"parity: {report.parity.describe()}")
    if report.quantization is not None:
        click.echo(f"float model: {report.float_output}")
        click.echo(report.quantization.describe())

