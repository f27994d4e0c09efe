"""A config as `--help` shows it: every key with its value as a
command-line override, and the comment the config files give it."""

import os
import re
from typing import Any, Iterator

import ml_collections

# `config.key = ...  # comment` or a comment line right above `config.key =`.
_ASSIGNMENT = re.compile(r'^\s*config\.([\w.]+)\s*=[^#]*?(?:#\s*(.*))?$')
_COMMENT = re.compile(r'^\s*#\s?(.*)$')
_WIDTH = 100  # characters of a description
_SIBLING = re.compile(r"sibling\(__file__,\s*'(\w+)'\)")


def _config_files(config_file: str) -> list[str]:
  """`config_file` and the files it builds on (`sibling(__file__, NAME)`,
  vit_jax/config/files.py), nearest first."""
  files, pending = [], [os.path.abspath(config_file)]
  while pending:
    path = pending.pop(0)
    if path in files or not os.path.exists(path):
      continue
    files.append(path)
    with open(path) as f:
      pending += [os.path.join(os.path.dirname(path), f'{name}.py')
                  for name in _SIBLING.findall(f.read())]
  return files


def comments_of(config_file: str) -> dict[str, str]:
  """Key -> the one-line description `config_file`, or a config file it
  builds on, gives it (the nearest wins)."""
  found: dict[str, str] = {}
  for path in _config_files(config_file):
    above = []
    with open(path) as f:
      for line in f:
        comment = _COMMENT.match(line)
        if comment:
          above.append(comment.group(1).strip())
          continue
        assignment = _ASSIGNMENT.match(line)
        if assignment:
          key, trailing = assignment.group(1), assignment.group(2)
          text = trailing or ' '.join(above)
          if len(text) > _WIDTH:
            text = text[:_WIDTH - 3].rsplit(' ', 1)[0] + ' ...'
          if text and key not in found:
            found[key] = text.rstrip('.')
        above = []
  return found


def leaves(value: Any, prefix: str = '') -> Iterator[tuple[str, Any]]:
  """('a.b.c', value) for every leaf of a config or dict, sorted by key."""
  if isinstance(value, (ml_collections.ConfigDict, dict)):
    for key, child in sorted(value.items()):
      yield from leaves(child, f'{prefix}.{key}' if prefix else key)
  else:
    yield prefix, value


def describe(config: ml_collections.ConfigDict, config_file: str) -> list[str]:
  """One line per key: `--config.KEY=VALUE`, then its description."""
  comments = comments_of(config_file)
  lines = []
  for key, value in leaves(config):
    line = f'  --config.{key}={value!r}' if isinstance(value, str) else (
        f'  --config.{key}={value}')
    description = comments.get(key)
    lines.append(f'{line:<56} {description}' if description else line)
  return lines
