"""User-facing errors: a mistake in input becomes one clear line and exit code 2."""


class UserError(Exception):
    """An error caused by the user's input (a file, an option, a config key).

    The CLI prints it as a single line, without a traceback, and exits with code 2.
    """


def require(condition: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UserError(message)
