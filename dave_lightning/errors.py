"""The one exception type for mistakes in what a user passed (paths, files, options)."""


class UsageError(ValueError):
    """Bad user input; the message is one line naming the problem and the fix.

    Messages name the Python parameter in backticks (```image_size```); ``dave-lightning``
    prints them with the matching command-line flag instead (``--image-size``), as
    ``dave-lightning: error: <message>``, and exits with 2, never with a traceback.
    """
