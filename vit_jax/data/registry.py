"""Data sources by the scheme of `config.dataset`:

  'digits'            the bundled real dataset (scikit-learn's 8x8 digits)
  'synthetic'         generated batches, no files (benchmarks, tests)
  'folder:PATH'       PATH/<split>/<class>/<image>, local or gs://
  'tfds_dir:PATH'     a prepared TFDS dataset directory (e.g. ImageNet-21k)
  'arrayrecord:PATH'  ArrayRecord shards written by `python -m
                      vit_jax.data.convert`, read with Grain (no TensorFlow)
  any other name      a TFDS dataset (optionally 'name:version')

Each scheme names the function that opens it ('module:function'), called
as `function(argument, data_dir=..., config=...)` and returning a `Source`.
Only the chosen source's module is imported: a source that does not use
tf.data never imports TensorFlow. A new source is one module and one line
here.
"""

import importlib
from typing import Any, Callable, Iterator, Protocol

from vit_jax.runtime.user_errors import ConfigError, UserError

SOURCES = {
    'digits': 'vit_jax.data.digits:open_digits',
    'synthetic': 'vit_jax.data.synthetic:open_synthetic',
    'folder': 'vit_jax.data.sources:open_folder',
    'tfds_dir': 'vit_jax.data.sources:open_tfds_dir',
    'tfds': 'vit_jax.data.sources:open_tfds',
    'arrayrecord': 'vit_jax.data.arrayrecord:open_arrayrecord',
}
# What a pipeline does with an image it cannot read or decode.
ON_CORRUPT = ('stop', 'skip')

# Schemes read with Grain and the Pillow/OpenCV ops (vit_jax/data/image_ops.py);
# the others with tf.data and its ops.
GRAIN_SCHEMES = ('arrayrecord', 'digits')

# Schemes written without ':ARGUMENT'.
BARE_SCHEMES = ('digits', 'synthetic')

# A factory of fresh passes over an eval split (host batches with a 'mask').
EvalPasses = Callable[[], Iterator[dict]]


class DatasetNotFoundError(UserError, FileNotFoundError):
  """A dataset is not where the config says; the message says what to do."""


class CorruptImageError(UserError, ValueError):
  """An image could not be decoded or preprocessed."""


def check_on_corrupt(on_corrupt: str) -> None:
  if on_corrupt not in ON_CORRUPT:
    raise ConfigError(f'config.on_corrupt={on_corrupt!r}: expected one of '
                      f'{list(ON_CORRUPT)}; set --config.on_corrupt=stop or skip.')


class Source(Protocol):
  """A dataset: what it holds, and host batches of it for this process.

  `describes_data` is False for sources whose classes and sizes are the
  config's (synthetic data), True where the data tells them; `uses_pp`
  says whether the config's op strings (pp_train, pp_eval) apply."""
  num_classes: int | None
  class_names: list[str]
  split_names: list[str]
  describes_data: bool
  uses_pp: bool

  def process_counts(self, split: str, process_count: int) -> list[int]: ...

  def train_input(self, split: str, *, pp: str, batch_size: int, seed: int,
                  shuffle_buffer: int, cache_raw: bool, on_corrupt: str,
                  num_classes: int | None) -> Any: ...

  def eval_passes(self, split: str, *, pp: str, batch_size: int,
                  on_corrupt: str = 'stop', cache: bool = False
                  ) -> EvalPasses: ...


def scheme_of(dataset: str) -> tuple[str, str]:
  """'folder:/photos' -> ('folder', '/photos'); 'cifar10:3.*.*' -> ('tfds',
  'cifar10:3.*.*'); 'digits' -> ('digits', '')."""
  if dataset in BARE_SCHEMES:
    return dataset, ''
  scheme, sep, argument = dataset.partition(':')
  if sep and scheme in SOURCES and scheme not in BARE_SCHEMES:
    return scheme, argument
  return 'tfds', dataset


def open_source(dataset: str, *, data_dir: str | None = None,
                config=None) -> Source:
  scheme, argument = scheme_of(dataset)
  module, _, function = SOURCES[scheme].partition(':')
  opener = getattr(importlib.import_module(module), function)
  return opener(argument, data_dir=data_dir, config=config)
