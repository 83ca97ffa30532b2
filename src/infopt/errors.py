"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


def first_line(err: BaseException) -> str:
    """``Type: first line of the message``: how a failure that is not infopt's is said in one line."""
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"


class InfoptError(Exception):
    """Base class: the message is complete and says what to do."""


class ConfigError(InfoptError):
    """A config value is wrong; the message names the key, the value and what is allowed."""


class ResourceError(InfoptError):
    """A model, dataset or file cannot be reached or is broken."""
