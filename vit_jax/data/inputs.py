"""Train iterator and eval passes for a config.

TensorFlow is imported only for real datasets: the synthetic source (and so
the benchmark and the trainer's tests) runs without it.
"""

import logging
from typing import Callable, Iterator

import jax

from vit_jax.data.synthetic import BatchIterator, SyntheticSource
from vit_jax.user_errors import ConfigError

EvalData = dict[str, Callable[[], Iterator[dict]]]


def _synthetic(config) -> tuple[BatchIterator, EvalData]:
  common = dict(num_classes=config.num_classes, image_size=config.image_size,
                process_index=jax.process_index(),
                process_count=jax.process_count())
  train = SyntheticSource(batch_size=config.batch_size, seed=config.seed,
                          **common)
  evaluation = SyntheticSource(batch_size=config.eval_batch_size,
                               seed=config.seed, **common)
  # Eval batches come from the far end of the same stream: unseen examples
  # of the same classes.
  first_eval = 10**9
  return BatchIterator(train), {'accuracy': lambda: (
      evaluation.batch(first_eval + i) for i in range(config.eval_batches))}


def eval_split(config) -> str | None:
  """config.eval_split, where 'None' typed on the command line means none."""
  split = config.get('eval_split')
  return None if split in (None, '', 'None', 'none') else split


def _op_string(config, key: str, sizes: dict) -> str:
  """config.<key> with its placeholders filled in and its ops parsed, or a
  ConfigError that names the key."""
  from vit_jax.data.ops import Preprocess  # pylint: disable=g-import-not-at-top
  try:
    pp = config[key].format(**sizes)
    Preprocess(pp)
  except KeyError as e:
    raise ConfigError(f'config.{key}={config[key]!r}: unknown placeholder '
                      f'{{{e.args[0]}}}; the placeholders are {{image_size}} '
                      f'and {{resize_size}}.') from None
  except (ValueError, IndexError) as e:
    raise ConfigError(f'config.{key}={config[key]!r}: {e}') from None
  return pp


def make_inputs(config) -> tuple[object, EvalData]:
  """(train iterator, {metric name: eval pass factory}) for config.dataset."""
  if config.dataset == 'synthetic':
    return _synthetic(config)
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from vit_jax.data import pipeline, sources
  # tf.data runs on the host: keep TensorFlow off the accelerators JAX uses
  # (it would otherwise reserve GPU memory).
  tf.config.set_visible_devices([], 'GPU')
  process = dict(process_index=jax.process_index(),
                 process_count=jax.process_count())
  source = sources.make_source(config.dataset, config.data_dir)
  # Op strings may say {image_size} and {resize_size} (the eval resize
  # before a central crop: 256 for 224, as in the ImageNet convention).
  sizes = dict(image_size=config.image_size,
               resize_size=config.image_size * 8 // 7)
  pp_train, pp_eval = (_op_string(config, 'pp_train', sizes),
                       _op_string(config, 'pp_eval', sizes))
  if source.num_classes != config.num_classes:
    raise ConfigError(
        f'dataset {config.dataset!r} has {source.num_classes} classes but '
        f'config.num_classes={config.num_classes}; set --config.num_classes='
        f'{source.num_classes}.')
  for key in ('train_split', 'eval_split'):
    split = config.train_split if key == 'train_split' else eval_split(config)
    if split is not None:
      try:
        source.process_counts(split, jax.process_count())
      except sources.DatasetNotFoundError as e:
        raise sources.DatasetNotFoundError(f'config.{key}={split!r}: {e}') from None
  train = pipeline.TrainIterator(
      source, config.train_split, pp=pp_train,
      batch_size=config.batch_size, seed=config.seed,
      shuffle_buffer=config.shuffle_buffer, cache_raw=config.cache_raw,
      on_corrupt=config.on_corrupt, num_classes=config.num_classes, **process)
  evals = {}
  eval_common = dict(pp=pp_eval, batch_size=config.eval_batch_size,
                     on_corrupt=config.on_corrupt, cache=config.cache_eval,
                     **process)
  if eval_split(config):
    evals['accuracy'] = pipeline.eval_batches(source, eval_split(config),
                                              **eval_common)
  if config.get('real_eval'):
    try:
      real = sources.TfdsSource('imagenet2012_real', config.data_dir,
                                label_key='real_label')
      evals['real_accuracy'] = pipeline.eval_batches(real, 'validation',
                                                     **eval_common)
    except sources.DatasetNotFoundError as e:
      logging.warning('skipping the ImageNet ReaL evaluation: %s', e)
  return train, evals
