"""The one exception type for bad input: the CLI prints its message on one line and exits with 2."""


class UserError(Exception):
    """A problem with what the user asked for (arguments, config, files), not a bug."""


class RunFailed(Exception):
    """A run that could not complete for a reason outside the request (e.g. actors kept dying)."""


def one_line(err: BaseException | str, limit: int = 500) -> str:
    """An error message on one line, at most `limit` characters (for status files and manifests)."""
    return " ".join(str(err).split())[:limit]
