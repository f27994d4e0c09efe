"""Splits by name or slice ('train[:90%]'), the contiguous part of a split
each process reads, and the class-stratified order of image folders:
shared by the tf.data sources and the ArrayRecord source, without
TensorFlow."""

import re

import numpy as np

from vit_jax.data.registry import DatasetNotFoundError


def process_range(total: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, end) of this process's contiguous part of `total` examples."""
  return (total * process_index // process_count,
          total * (process_index + 1) // process_count)


_SLICE = re.compile(r'^(\w+)\[(-?\d*)(%?):(-?\d*)(%?)\]$')


def process_counts(total: int, process_count: int) -> list[int]:
  return [end - start for start, end in
          (process_range(total, i, process_count) for i in range(process_count))]


def slice_split(split: str, names, size_of) -> tuple[str, int, int]:
  """'train[:90%]' -> ('train', 0, 0.9 * n); plain names take everything.
  `size_of(name)` gives a split's example count."""
  match = _SLICE.match(split)
  name = match.group(1) if match else split
  if name not in names:
    raise DatasetNotFoundError(
        f'unknown split {split!r}; this dataset has splits {sorted(names)} '
        f'(slices like {sorted(names)[0]}[:90%] work too).')
  total = size_of(name)
  if not match:
    return name, 0, total

  def bound(text, percent, default):
    if not text:
      return default
    value = int(text) * total // 100 if percent else int(text)
    return max(0, min(total, value + total if value < 0 else value))
  return name, bound(match.group(2), match.group(3), 0), bound(
      match.group(4), match.group(5), total)


def stratified_order(labels, seed: int = 0) -> np.ndarray:
  """A fixed permutation of range(len(labels)) in which every contiguous
  run, in particular the last tenth that a held-out split takes, holds each
  class in proportion to its size: the examples of each class are shuffled
  (seeded) and spread evenly over the whole order."""
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  position = np.empty(len(labels))
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    position[rng.permutation(members)] = (
        (np.arange(len(members)) + 0.5) / len(members))
  return np.lexsort((labels, position))
