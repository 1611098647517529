"""One exception type for user mistakes, so every command line can print it as one line and exit 2, and the
argument parser every command line uses, which does the same for its own usage mistakes."""

import argparse


class UserError(ValueError):
    """Bad input from the user: the message names the problem and the fix; no traceback is shown."""


def one_line(err: Exception) -> str:
    """The message to show: a DataLoader process's error arrives as a traceback report whose last line is
    "<class>: <message>"; that message alone."""
    lines = str(err).strip().splitlines()
    if len(lines) > 1 and ": " in lines[-1]:
        return lines[-1].split(": ", 1)[1]
    return lines[0] if lines else type(err).__name__


class OneLineParser(argparse.ArgumentParser):
    """A usage mistake as one line and exit 2, like every other bad input (no usage block)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
