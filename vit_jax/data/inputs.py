"""Train iterator and eval passes for a config, from the source its
`dataset` names (vit_jax/data/registry.py), with the values only the data
can tell filled in first.

TensorFlow is imported only by the sources that use tf.data: synthetic
data (and so the benchmark and the trainer's tests) runs without it.
"""

from typing import Any, Callable, Protocol

from vit_jax.config import derived as derived_config
from vit_jax.data import registry
from vit_jax.data.registry import DatasetNotFoundError, EvalPasses, Source
from vit_jax.runtime.user_errors import ConfigError


class TrainInput(Protocol):
  """What the train loop reads: host batches ({'images', 'labels'}), a
  position it checkpoints and restores (collective on multi-host runs), and
  scalars to log beside the train metrics."""

  def __next__(self) -> dict[str, Any]: ...

  def get_state(self) -> dict[str, Any]: ...

  def set_state(self, state: dict[str, Any]) -> None: ...

  def metrics(self) -> dict[str, float]: ...


def split_or_none(split: str | None) -> str | None:
  """A split setting, where 'None' typed on the command line means none."""
  return None if split in (None, '', 'None', 'none') else split


def eval_split(config) -> str | None:
  return split_or_none(config.get('eval_split'))


def _op_string(config, key: str, sizes: dict) -> str:
  """config.<key> with its placeholders filled in and its ops parsed, or a
  ConfigError that names the key."""
  # The ops module imports TensorFlow, which only tf.data sources need.
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


def op_string(config, key: str) -> str:
  """config.pp_train or config.pp_eval, ready to parse. Op strings may say
  {image_size} and {resize_size} (the eval resize before a central crop:
  256 for 224, as in the ImageNet convention)."""
  sizes = dict(image_size=config.image_size,
               resize_size=config.image_size * 8 // 7)
  return _op_string(config, key, sizes)


# Split names taken for evaluation, in this order of preference.
EVAL_SPLIT_NAMES = ('validation', 'val', 'valid', 'test')
# A split to hold out of train when the data has no validation or test split.
HELD_OUT_FRACTION = 0.1
MAX_HELD_OUT = 10_000


def open_source(config) -> Source:
  """The data source config.dataset names."""
  return registry.open_source(config.dataset, data_dir=config.data_dir,
                              config=config)


def split_size(source, split: str) -> int:
  return sum(source.process_counts(split, 1))


def pick_eval_split(source, train_split: str,
                    log: Callable[[str], None] = print) -> tuple[str, str]:
  """(train split, eval split): the data's validation split (named
  `validation`, `val` or `valid`), else its test split, else the last tenth
  (at most MAX_HELD_OUT) of `train_split`. Sources keep their splits in an
  order where that tenth is a class-stratified sample (folders: a fixed,
  seeded interleaving of the classes; TFDS: the shuffled file order)."""
  names = getattr(source, 'split_names', [])
  for name in EVAL_SPLIT_NAMES:
    if name in names:
      log(f'from the data: eval split {name!r}')
      return train_split, name
  total = split_size(source, train_split)
  held = max(1, min(int(total * HELD_OUT_FRACTION), MAX_HELD_OUT))
  log(f'from the data: no validation or test split; holding out '
      f'{held} of {total} examples of {train_split!r} (a class-stratified '
      f'sample) for evaluation')
  return f'{train_split}[:-{held}]', f'{train_split}[-{held}:]'


def resolve_from_data(config, source, log: Callable[[str], None] = print) -> None:
  """Fills what only the data can tell and the config leaves at None or
  'auto': the class count, the eval split (validation, else test, else a
  held-out slice of train) and the number of training examples. Split
  names are checked here, before anything is written."""
  if not source.describes_data:  # e.g. synthetic: every value is in the config
    return
  # Values a config set for another dataset than the one it now names.
  stale = config.get('defaults_dataset') not in (None, config.dataset)
  if stale:
    log(f'config.dataset {config.dataset!r} replaces the config\'s '
        f'{config.defaults_dataset!r}: classes, examples and missing splits '
        f'are read from the data; image_size {config.image_size}, pp_train '
        f'{config.pp_train!r} and pp_eval {config.pp_eval!r} stay as set.')
  names = getattr(source, 'split_names', [])
  if config.num_classes is None or stale:
    config.num_classes = source.num_classes
    log(f'from the data: {source.num_classes} classes')
  if stale and eval_split(config) and eval_split(config).split('[')[0] not in names:
    config.eval_split = 'auto'
  if config.get('eval_split') == 'auto':
    config.train_split, config.eval_split = pick_eval_split(
        source, config.train_split, log)
  for key in ('train_split', 'eval_split'):
    split = config.train_split if key == 'train_split' else eval_split(config)
    if split is not None:
      try:
        count = split_size(source, split)
      except DatasetNotFoundError as e:
        raise DatasetNotFoundError(f'config.{key}={split!r}: {e}') from None
      if key == 'train_split' and config.get('train_examples') != count:
        config.train_examples = count
        log(f'from the data: {count} training examples')


def make_train_input(config, source=None) -> TrainInput:
  """The train iterator for config.dataset. `source` is
  `open_source(config)`, given by callers that have already filled the
  derived values (`resolve_from_data`, `vit_jax.config.derived.fill`, as the
  entry points do, with logging); without it they are filled here quietly."""
  if source is None:
    quiet = lambda _: None  # pylint: disable=unnecessary-lambda-assignment
    source = open_source(config)
    resolve_from_data(config, source, quiet)
    derived_config.fill(config, quiet)
  if source.describes_data and source.num_classes != config.num_classes:
    raise ConfigError(
        f'dataset {config.dataset!r} has {source.num_classes} classes but '
        f'config.num_classes={config.num_classes}; set --config.num_classes='
        f'{source.num_classes}.')
  return source.train_input(
      config.train_split, pp=_pp_of(config, source, 'pp_train'),
      batch_size=config.batch_size, seed=config.seed,
      shuffle_buffer=config.shuffle_buffer, cache_raw=config.cache_raw,
      on_corrupt=config.on_corrupt, num_classes=config.num_classes)


def eval_passes(config, source, split: str) -> EvalPasses:
  """Fresh passes over `split` of config.dataset through config.pp_eval
  (`source` from `open_source`)."""
  return source.eval_passes(
      split, pp=_pp_of(config, source, 'pp_eval'),
      batch_size=config.eval_batch_size, on_corrupt=config.on_corrupt,
      cache=config.cache_eval)


def _pp_of(config, source, key: str) -> str | None:
  return op_string(config, key) if source.uses_pp else None
