"""One exception type for user mistakes, so every command line can print it as one line and exit 2."""


class UserError(ValueError):
    """Bad input from the user: the message names the problem and the fix; no traceback is shown."""
