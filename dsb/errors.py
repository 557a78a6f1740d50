"""One error family for everything the user can get wrong.

The CLI turns any :class:`DsbError` into a one-paragraph message on stderr and exit code
2 (``dsb validate`` uses exit 1 for "the file parsed but is invalid"). Library code
raises these with the file, row or image named in the message; it never calls
``sys.exit``.
"""

from __future__ import annotations


class DsbError(Exception):
    """Base class: a problem with the user's input, config or environment."""

    exit_code = 2


class DataError(DsbError):
    """A data file or folder is missing, unreadable or malformed."""


class ConfigError(DsbError):
    """A config file has an unknown key, a wrong type or an invalid value."""


class SubmissionError(DsbError):
    """A submission file cannot be parsed (not a CSV, wrong columns, junk)."""


class InvalidSubmissionError(SubmissionError):
    """A submission that parses but has problems Kaggle would refuse (exit 1).

    ``problems`` holds every :class:`dsb.submission.Problem`; the message lists the first ones.
    """

    exit_code = 1

    def __init__(self, message: str, problems: tuple = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


class CheckpointError(DsbError):
    """A checkpoint or weights file is missing, corrupt or incompatible."""
