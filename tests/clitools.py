"""Run the ``sleepnas`` CLI in-process the way a shell would, with its exit status."""

from __future__ import annotations

import contextlib
import io

from sleepnas.tools.cli import main


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """Call ``sleepnas ARGS`` and return ``(exit_code, stdout, stderr)``.

    Unlike ``CliRunner.invoke(cli, ...)``, this goes through `main`, so a
    `SleepnasError` becomes the one-line message and exit status a user sees.
    """
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            if isinstance(exc.code, int):
                code = exc.code
            elif exc.code is not None:
                code = 1
    return code, out.getvalue(), err.getvalue()
