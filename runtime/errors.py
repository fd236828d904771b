"""The exception type for errors a user can fix, and the option checks that raise it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class SleepnasError(Exception):
    """An error caused by the user's input: a file, an option or a value.

    The message is one line that names the file, parameter or value and says what
    would be valid. The CLI prints it without a traceback and exits non-zero.
    """


def check_option(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise a `SleepnasError`.

    Parameters
    ----------
    name : str
        The parameter name as the user spells it, for example ``"--scheme"``.
    value : object
        The value given.
    allowed : iterable
        Every valid value; all of them are listed in the error.
    """
    allowed = list(allowed)
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise SleepnasError(f"invalid {name} {value!r}: expected one of {choices}")
    return value


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """Return ``value`` if it is positive (or zero where allowed), else raise."""
    if value != value or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise SleepnasError(f"invalid {name} {value!r}: expected a number {bound}")
    return value
