"""Errors that are the user's to fix: the CLI prints them without a traceback."""


class UserError(ValueError):
    """Bad input (a file, a field, a config key): the message names it and says what was expected."""
