"""Errors a user can cause, reported as one clear line."""


class UserError(Exception):
    """Bad params, bad files or missing data: the message names the thing and the fix.

    The stage wrapper (:func:`pipeline.cli.stage_main`) prints it as one line and exits non-zero,
    without a traceback.
    """
