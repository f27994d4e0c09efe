"""Paths of a run's files: local, or in an object store (gs://...), and
writing them so that a killed process never leaves a partial one."""

import os
import shutil
from typing import Callable

from etils import epath


def is_remote(path) -> bool:
  """Whether `path` names an object store (scheme://...), not a local file."""
  return '://' in str(path)


def absolute_path(path: str) -> str:
  """A local path made absolute (orbax reads and writes arrays only under
  absolute paths); remote paths as they are."""
  return path if is_remote(path) else os.path.abspath(path)


def write_atomically(path, data: bytes | str) -> None:
  """`path` ends up holding all of `data`, or what it held before: never a
  part, whenever the process dies. A local file is written and synced under
  a temporary name beside it, then renamed over it; an object in a bucket
  appears only once its upload is complete."""
  if isinstance(data, str):
    data = data.encode()
  target = epath.Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):
    target.write_bytes(data)
    return
  partial = os.path.join(os.fspath(target.parent), f'.{target.name}.partial')
  with open(partial, 'wb') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(partial, os.fspath(target))


def replace_directory(path, write_into: Callable[[str], None]) -> None:
  """`write_into(directory)` fills a directory that then replaces `path`
  whole. Locally it is written beside `path` and renamed into place, so
  `path` is never half-written; in a bucket, where a folder is a set of
  objects, `write_into` writes there directly (it should write the file
  that marks the folder complete last)."""
  if is_remote(path):
    write_into(str(path))
    return
  target = os.path.abspath(os.fspath(path))
  parent, name = os.path.split(target)
  os.makedirs(parent, exist_ok=True)
  partial, old = (os.path.join(parent, f'.{name}.{what}')
                  for what in ('partial', 'old'))
  for leftover in (partial, old):
    shutil.rmtree(leftover, ignore_errors=True)
  write_into(partial)
  if os.path.exists(target):
    os.rename(target, old)
  os.rename(partial, target)
  shutil.rmtree(old, ignore_errors=True)
