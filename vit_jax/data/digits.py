"""`dataset='digits'`: scikit-learn's 1,797 handwritten digits (UCI; 8x8,
17 grey levels), shipped inside the scikit-learn wheel, read with Grain
from memory (no TensorFlow). A fixed, class-stratified split: 'train'
1,437 and 'test' 360 (36 per class).
"""

import functools

import numpy as np

from vit_jax.data import grain_pipeline
from vit_jax.formats import run_record


@functools.cache
def digits_arrays() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
  """(uint8 RGB images (1797, 8, 8, 3), int32 labels, {'train', 'test'}:
  the indices of each split in its fixed order)."""
  # scikit-learn is a slow import that only the digits need.
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  grey = np.round(digits.images * (255 / 16)).astype(np.uint8)
  images = np.repeat(grey[..., None], 3, axis=-1)
  labels = digits.target.astype(np.int32)
  rng = np.random.default_rng(0)
  test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:36]
                         for c in range(10)])
  train = np.setdiff1d(np.arange(len(labels)), test)
  return images, labels, {'train': rng.permutation(train), 'test': np.sort(test)}


class _Rows:
  """The examples of one split as (pixels, label, key) records."""

  def __init__(self, split: str, indices: np.ndarray):
    self.split, self.indices = split, indices

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    images, labels, _ = digits_arrays()
    row = int(self.indices[index])
    return images[row], int(labels[row]), f'digits/{self.split}/{row}'


def _as_is(record):
  return record


class DigitsSource(grain_pipeline.GrainSource):
  name = 'digits'
  num_classes = 10
  split_names = ['test', 'train']
  decode = staticmethod(_as_is)

  def __init__(self, workers: int = 0):
    self.workers = workers
    self.class_names = run_record.default_labels(10)
    self.splits = digits_arrays()[2]

  def split_size(self, name: str) -> int:
    return len(self.splits[name])

  def records(self, name: str) -> _Rows:
    return _Rows(name, self.splits[name])


def open_digits(argument: str, *, data_dir=None, config=None) -> DigitsSource:
  del argument, data_dir
  return DigitsSource(workers=(config or {}).get('data_workers') or 0)
