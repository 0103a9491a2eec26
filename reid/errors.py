"""User-facing errors.

Every mistake a user can make (a bad config key, a broken annotation file, a missing weights
directory, a checkpoint of another model) raises a subclass of :class:`ReidError` whose message is
one sentence naming the file / record / key at fault. The command-line entry points catch
``ReidError`` and print ``error: <message>`` with exit status 2 instead of a traceback.
"""

from __future__ import annotations


class ReidError(Exception):
    """Base class of errors caused by user input (reported in one line, exit status 2)."""


class ConfigError(ReidError, ValueError):
    """An unknown key, a wrong type or an impossible value in a config (names its dotted path)."""


class DataError(ReidError, ValueError):
    """A dataset file or record that cannot be used (names the file, record index and field)."""


class MissingWeightsError(ReidError, FileNotFoundError):
    """A local encoder directory that does not exist (the seed raises FileNotFoundError too)."""


class CheckpointError(ReidError, ValueError):
    """A checkpoint or exported model that does not fit (names the first mismatching tensor)."""


def report_user_errors(main):
    """Decorate a command-line ``main``: a ReidError becomes ``error: <message>`` on stderr and exit
    status 2 (no traceback); anything else is a bug and keeps its traceback. Under a multi-process
    launcher only rank 0 prints the line (every rank meets the same mistake)."""
    import functools
    import os
    import sys

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except ReidError as exc:
            if os.environ.get("RANK", "0") == "0":
                print(f"error: {exc}", file=sys.stderr, flush=True)
            return 2

    return wrapper
