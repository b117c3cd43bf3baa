"""Errors a user can cause, reported as one clear line."""


class UserError(Exception):
    """Bad params, bad files or missing data: the message names the thing and the fix.

    The stage wrapper (:func:`pipeline.cli.stage_main`) prints it as one line and exits non-zero,
    without a traceback.
    """


class Stopped(Exception):
    """Work stopped on request (Ctrl-C, SIGTERM) after saving what can be resumed.

    ``code`` is the exit status (128 + signal number, as shells report it)."""

    def __init__(self, message: str, code: int = 130):
        super().__init__(message)
        self.code = code
