"""The one exception type for mistakes in what a user passed (paths, files, options), the
one-line description of a caught exception that such messages quote, and the Python object a
refused ``torch.load(weights_only=True)`` names."""

import re

_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*m")
# torch's weights-only unpickler names what it refused: "Unsupported global: GLOBAL x.Y ...",
# "Trying to load unsupported GLOBAL posix.system whose module posix is blocked", or
# "... allowlisted via `add_safe_globals`, but got <class 'x.Y'>".
_REFUSED_OBJECT = re.compile(r"GLOBAL (\S+)|but got <class '([^']+)'>")


class UsageError(ValueError):
    """Bad user input; the message is one line naming the problem and the fix.

    Messages name the Python parameter in backticks (```image_size```); ``dave-lightning``
    prints them with the matching command-line flag instead (``--image-size``), as
    ``dave-lightning: error: <message>``, and exits with 2, never with a traceback.
    """


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (terminal colour codes removed)."""
    text = _TERMINAL_CODES.sub("", str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


def describe(error: BaseException, limit: int = 120) -> str:
    """``Type: first line of the message``, at most ``limit`` characters of it."""
    return f"{type(error).__name__}: {first_line(error)[:limit]}"


def refused_object(error: BaseException) -> str | None:
    """The Python object (``posix.system``, ``my_pkg.Config``) that a ``weights_only`` load
    refused to unpickle, as ``error`` names it; None when it names none."""
    match = _REFUSED_OBJECT.search(str(error))
    return None if match is None else match[1] or match[2]
