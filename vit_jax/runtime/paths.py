"""Paths of a run's files: local, or in an object store (gs://...)."""

import os


def is_remote(path) -> bool:
  """Whether `path` names an object store (scheme://...), not a local file."""
  return '://' in str(path)


def absolute_path(path: str) -> str:
  """A local path made absolute (orbax reads and writes arrays only under
  absolute paths); remote paths as they are."""
  return path if is_remote(path) else os.path.abspath(path)
