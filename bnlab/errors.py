"""The one exception family the library raises for problems a user can fix.

The library never prints for control flow and never exits: the CLI turns a
`BnlabError` into one clear red line and an exit code.
"""


class BnlabError(Exception):
    """A problem with the user's input or files, stated so that they can fix it."""

    exit_code = 1


class ConfigError(BnlabError, ValueError):
    """A bad config key or value; detected before any work starts."""

    exit_code = 2


class DataError(BnlabError):
    """A dataset that is missing, corrupt, or does not fit the chosen model."""

    exit_code = 2


class RunFileError(BnlabError):
    """A run file (checkpoint, event file, summary.json) that is missing or damaged."""


class RunInUseError(BnlabError):
    """A run or sweep directory that another process holds (it is training there right now)."""

    exit_code = 2
