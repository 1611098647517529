"""The one error the analysis package raises for bad input, so callers can print it as one line."""


class AnalysisError(ValueError):
    """Bad input to the analysis (missing folder, foreign or corrupt file, bad argument); the message is one
    line that names the problem and the fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # one line, whatever a wrapped library error held
