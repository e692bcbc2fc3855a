"""The one exception every bad data input raises."""


class DataError(ValueError):
    """Bad data input: the message is one line, ``FILE[:LINE]: problem``, fit to show a user as is."""


def located(where: str, line: int | None = None) -> str:
    """``FILE`` or ``FILE:LINE``, the prefix of every DataError message."""
    return f"{where}:{line}" if line is not None else str(where)


def describe(err: Exception) -> str:
    """``Type: first line of the message``: a third-party error folded into a one-line DataError."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
