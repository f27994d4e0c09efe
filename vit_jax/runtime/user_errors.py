"""Errors in what the user typed or pointed at, and how entry points show them.

A user error's message names the bad value, what was expected and the fix.
Entry points (vit_jax/app.py) print it as one `error: ` line on stderr and exit with status
2, without a traceback; every other exception keeps its traceback.
`UserError` is a plain marker base, so errors that are also OSErrors (a
dataset or checkpoint that is not there) can carry it too.
"""

EXIT_USER_ERROR = 2


class UserError(Exception):
  """Base of every error caused by a value the user gave."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work; raised before anything is written."""
