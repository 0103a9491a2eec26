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
    """A checkpoint or exported model that does not fit (names the first mismatching tensor), is
    damaged (names the file and what is wrong with it) or could not be written."""


class DiskFullError(ReidError, OSError):
    """A write that found no room (names the path, and the bytes needed when they are known)."""


BROKEN_PIPE_STATUS = 141  # 128 + SIGPIPE: what a tool killed by a closed pipe exits with


def report_user_errors(main):
    """Decorate a command-line ``main``: a ReidError becomes ``error: <message>`` on stderr and exit
    status 2 (no traceback); so does a write that finds the disk full, read-only or forbidden. A reader that closed our
    output pipe (``reid-data ... | head``) ends the program quietly; Ctrl-C with "interrupted"
    (status 130; the trainer handles it itself once training runs). Anything else is a bug and keeps
    its traceback. Under a multi-process launcher only rank 0 prints the line (every rank meets the
    same mistake), unless the error says it was met by this process alone (``exc.every_rank``), or
    that another process met it and reports it (``exc.quiet``)."""
    import errno
    import functools
    import os
    import sys

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            status = main(*args, **kwargs)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
            return status
        except BrokenPipeError:
            silence_stdout()
            return BROKEN_PIPE_STATUS
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr, flush=True)
            return 130
        except ReidError as exc:
            if getattr(exc, "quiet", False):  # another process met the fault and says so
                return 2
            if os.environ.get("RANK", "0") == "0" or getattr(exc, "every_rank", False):
                print(f"error: {exc}", file=sys.stderr, flush=True)
            return 2
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            if not full and exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            where = exc.filename or "a file"
            if full:
                print(f"error: {where}: no space left on the device ({exc.strerror}); free space and run "
                      "again (--resume latest continues a run from its newest checkpoint)", file=sys.stderr, flush=True)
            else:
                print(f"error: {where}: {exc.strerror}", file=sys.stderr, flush=True)
            return 2

    return wrapper


def silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail a second time."""
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
