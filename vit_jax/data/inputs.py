"""Train iterator and eval passes for a config, from the source its
`dataset` names (vit_jax/data/registry.py), with the values only the data
can tell filled in first.

TensorFlow is imported only by the sources that use tf.data: synthetic
data (and so the benchmark and the trainer's tests) and ArrayRecord data
(read with Grain) run without it.
"""

from typing import Any, Protocol

from vit_jax.config import resolve
from vit_jax.data import registry
from vit_jax.data.registry import EvalPasses, Source
from vit_jax.runtime.user_errors import ConfigError


class TrainInput(Protocol):
  """What the train loop reads: host batches ({'images', 'labels'}), a
  position it checkpoints and restores (collective on multi-host runs), and
  scalars to log beside the train metrics."""

  def __next__(self) -> dict[str, Any]: ...

  def get_state(self) -> dict[str, Any]: ...

  def set_state(self, state: dict[str, Any]) -> None: ...

  def metrics(self) -> dict[str, float]: ...


def filled_op_string(config, key: str) -> str:
  """config.pp_train or config.pp_eval with its placeholders filled in:
  {image_size} and {resize_size} (the eval resize before a central crop:
  256 for 224, as in the ImageNet convention)."""
  sizes = dict(image_size=config.image_size,
               resize_size=config.image_size * 8 // 7)
  try:
    return config[key].format(**sizes)
  except KeyError as e:
    raise ConfigError(f'config.{key}={config[key]!r}: unknown placeholder '
                      f'{{{e.args[0]}}}; the placeholders are {{image_size}} '
                      f'and {{resize_size}}.') from None


def op_string(config, key: str, source=None) -> str:
  """`filled_op_string`, with its ops parsed by the pipeline of `source`
  (the tf.data ops when it has no `parse_ops`): a ConfigError names the key
  of a string that does not parse."""
  parse = getattr(source, 'parse_ops', None)
  if parse is None:
    # The ops module imports TensorFlow, which only tf.data sources need.
    from vit_jax.data.ops import Preprocess as parse  # pylint: disable=g-import-not-at-top
  pp = filled_op_string(config, key)
  try:
    parse(pp)
  except (ValueError, IndexError) as e:
    raise ConfigError(f'config.{key}={config[key]!r}: {e}') from None
  return pp


def open_source(config) -> Source:
  """The data source config.dataset names."""
  return registry.open_source(config.dataset, data_dir=config.data_dir,
                              config=config)


def make_train_input(config, source=None) -> TrainInput:
  """The train iterator for config.dataset. `source` is
  `open_source(config)`, given by callers that have resolved the config
  (`vit_jax.config.resolve`, as the entry points do, with logging); without
  it the config is resolved here quietly."""
  if source is None:
    source = open_source(config)
    resolve.resolve(config, source, log=lambda _: None)
  if source.describes_data and source.num_classes != config.num_classes:
    raise ConfigError(
        f'dataset {config.dataset!r} has {source.num_classes} classes but '
        f'config.num_classes={config.num_classes}; set --config.num_classes='
        f'{source.num_classes}.')
  return source.train_input(
      config.train_split, pp=_pp_of(config, source, 'pp_train'),
      batch_size=config.batch_size, seed=config.seed,
      shuffle_buffer=config.shuffle_buffer, cache_raw=config.cache_raw,
      on_corrupt=config.on_corrupt, num_classes=config.num_classes,
      **({'repeats': config.repeated_augmentation}
         if config.get('repeated_augmentation', 1) != 1 else {}))


def eval_passes(config, source, split: str) -> EvalPasses:
  """Fresh passes over `split` of config.dataset through config.pp_eval
  (`source` from `open_source`)."""
  return source.eval_passes(
      split, pp=_pp_of(config, source, 'pp_eval'),
      batch_size=config.eval_batch_size, on_corrupt=config.on_corrupt,
      cache=config.cache_eval)


def _pp_of(config, source, key: str) -> str | None:
  return op_string(config, key, source) if source.uses_pp else None
