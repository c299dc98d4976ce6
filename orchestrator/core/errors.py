"""Errors and how runs report them: bad input (one line, exit code 2), failed runs, and interrupted ones."""


class UserError(Exception):
    """A problem with what the user asked for (arguments, config, files), not a bug."""


class RunFailed(Exception):
    """A run that could not complete for a reason outside the request (e.g. actors kept dying)."""


class Stopped(Exception):
    """The caller stopped a run before its end (a callback of the Python API asked to); it stays resumable."""


def one_line(err: BaseException | str, limit: int = 500) -> str:
    """An error message on one line, at most `limit` characters (for status files and manifests)."""
    return " ".join(str(err).split())[:limit]


INTERRUPTED = "interrupted (Ctrl-C or SIGTERM); run it again to continue from its last checkpoint"
STOPPED = "stopped by its caller; `pavdm resume` continues it from its last checkpoint"


def ending(error: BaseException) -> tuple[str, str]:
    """The state ('interrupted' or 'failed') and one-line reason a run records when `error` ended it; a run
    whose caller stopped it (Stopped, or GeneratorExit: it stopped reading the run's chunks) is interrupted."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", INTERRUPTED
    if isinstance(error, Stopped | GeneratorExit):
        return "interrupted", STOPPED
    return "failed", one_line(error) or type(error).__name__
