"""Click options shared by commands that keep the original tool's spellings."""

from __future__ import annotations

from typing import Any

import click


class UnderscoreOption(click.Option):
    """An option whose underscore spellings (``--data_path``) work but stay out of ``--help``."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        saved = self.opts
        self.opts = [name for name in saved if "_" not in name.lstrip("-")] or saved
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = saved


def underscore_option(*names: str, **kwargs: Any) -> Any:
    """Declare an option that also accepts the original tool's underscore spelling of each name."""
    spellings = list(names)
    for name in names:
        if name.startswith("--") and "-" in name[2:]:
            spellings.append("--" + name[2:].replace("-", "_"))
    kwargs.setdefault("show_default", True)
    return click.option(*spellings, cls=UnderscoreOption, **kwargs)
