"""The one exception type users see: a message that says what was wrong and what to do."""


class InstructSDError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits non-zero."""
