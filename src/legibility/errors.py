"""User-facing errors: each says what went wrong and what to do about it."""


class LegibilityError(Exception):
    """A problem with the user's input or environment, reported without a traceback by the CLI."""
