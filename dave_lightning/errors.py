"""The one exception type for mistakes in what a user passed (paths, files, options)."""


class UsageError(ValueError):
    """Bad user input; the message is one line naming the problem and the fix.

    ``dave-lightning`` prints it as ``dave-lightning: error: <message>`` and exits with 2, never
    with a traceback; the Python API raises it like any ``ValueError``.
    """
