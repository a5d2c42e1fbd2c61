"""User-facing errors.

Every problem the user can fix (a bad file, an unsupported op, a malformed input) is raised as a
`VerifierError` with a one-line message naming the culprit. The CLI turns these into a single
line on stderr and exit code 2; anything else is a bug in the verifier and keeps its traceback.
"""


class VerifierError(Exception):
    """A problem with the user's input, explained in one line."""


class ModelError(VerifierError):
    """The model file cannot be read or uses something the verifier does not support."""


class InputError(VerifierError):
    """A sample, label, eps or option is out of range or malformed."""


def one_line(error: BaseException, limit: int = 300) -> str:
    """An unexpected error as one line, "Type: message" with its whitespace collapsed, for an
    error row or the CLI's line about a bug."""
    return " ".join(f"{type(error).__name__}: {error}".split())[:limit]


def first_line(error: BaseException) -> str:
    """The first line of a third-party exception's message (its type if it has none), for the
    one-line errors above."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
