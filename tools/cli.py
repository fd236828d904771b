"""The ``sleepnas`` command line: a click group whose subcommands load lazily.

Each subcommand lives in its own module and is imported only when it runs, so
``sleepnas score`` and ``sleepnas bench`` never import torch. Commands only parse
options and call library functions.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from sleepnas.runtime.errors import SleepnasError

logger = logging.getLogger("sleepnas")

# name -> "module:attribute" of the click command; the module is imported on use.
_COMMANDS: dict[str, str] = {
    "data": "sleepnas.tools.cli_data:data",
    "cost": "sleepnas.tools.cli_cost:cost",
    "evaluate": "sleepnas.tools.cli_evaluate:evaluate",
    "search": "sleepnas.tools.cli_search:search",
    "train": "sleepnas.tools.cli_train:train",
    "export": "sleepnas.tools.cli_export:export",
    "score": "sleepnas.tools.cli_score:score",
    "bench": "sleepnas.tools.cli_bench:bench",
    "demo": "sleepnas.tools.cli_demo:demo",
}


class _LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith("sleepnas"):
                return None  # command not built into this install
            raise
        return getattr(module, attribute)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sleepnas")
    except PackageNotFoundError:
        return "unknown"


def configure_logging(verbosity: int) -> None:
    """Set the ``sleepnas`` logger: WARNING with ``-q``, INFO by default, DEBUG with ``-v``."""
    level = logging.INFO
    if verbosity < 0:
        level = logging.WARNING
    elif verbosity > 0:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if verbosity <= 0 else
                                           "%(asctime)s %(name)s %(levelname)s: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"],
                                               "max_content_width": 100})
@click.version_option(_version(), "--version", prog_name="sleepnas")
@click.option("-v", "--verbose", count=True, help="Log more (debug messages and full tracebacks).")
@click.option("-q", "--quiet", count=True, help="Log warnings and errors only, and show no progress bars.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int) -> None:
    """sleepnas: find a small, fast sleep-stage classifier for a device, export it to ONNX,
    and score recordings with it.

    A research and engineering tool, not a medical device.
    """
    ctx.ensure_object(dict)
    ctx.obj["verbosity"] = verbose - quiet
    configure_logging(verbose - quiet)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a `SleepnasError` becomes one line on stderr and exit status 1."""
    try:
        cli.main(args=argv, prog_name="sleepnas", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except SleepnasError as err:
        if logger.isEnabledFor(logging.DEBUG):
            logger.exception("error")
        click.echo(f"Error: {err}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except MemoryError:
        click.echo("Error: out of memory: lower --batch-size, --init-channels or --num-cells, "
                   "or use --preset small", err=True)
        sys.exit(1)
    except OSError as err:
        if logger.isEnabledFor(logging.DEBUG):
            logger.exception("error")
        name = f" {err.filename}" if getattr(err, "filename", None) else ""
        click.echo(f"Error:{name}: {err.strerror or err}", err=True)
        sys.exit(1)
