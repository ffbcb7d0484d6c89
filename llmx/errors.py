"""The errors shown to users as one line (`llmx: <kind>: <message>`), and nothing else."""
from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user; the message is the one line shown to them."""

    kind = "error"


class ConfigError(UserError):
    """A bad config key, value or combination."""

    kind = "config error"


class DataError(UserError):
    """A bad data file; the message starts with `path:line:`."""

    kind = "data error"
