"""A config resolved once per run, before anything is written: what the
user typed is checked, what only the data can tell is read from it (class
count, eval split, example count), the values left at None are derived
(`vit_jax.config.derived`), and the whole is checked again.
"""

import json
from typing import Callable

import jax

from vit_jax.config import checks, derived, describe
from vit_jax.data.registry import DatasetNotFoundError, Source
from vit_jax.runtime import coordination
from vit_jax.runtime.user_errors import UserError


def resolve(config, source: Source | None, *, log: Callable[[str], None] = print,
            num_devices: int | None = None) -> None:
  """Resolves `config` in place for `source` (`vit_jax.data.inputs.
  open_source(config)`; None where no data is read: benchmarks and compile
  checks) and `num_devices` (default: every device)."""
  num_devices = num_devices or jax.device_count()
  checks.check_config(config, num_devices)
  resolve_from_data(config, source, log)
  derived.fill(config, log)
  checks.check_config(config, num_devices)
  if coordination.multiprocess():
    agree_across_processes(config)


class ConfigMismatchError(UserError):
  """The processes of one job resolved different configs."""


def agree_across_processes(config) -> None:
  """Every process publishes its resolved config and compares all of them
  with process 0's, so every process stops with the same line: processes
  started with other flags would otherwise train another model without a
  word, or wait for each other forever (another step count)."""
  flat = {key: repr(value) for key, value in describe.leaves(config.to_dict())}
  coordination.publish(f'vit_jax/config/{jax.process_index()}', json.dumps(flat))
  configs = [json.loads(coordination.wait_for(f'vit_jax/config/{p}'))
             for p in range(jax.process_count())]
  first = configs[0]
  for other, seen in enumerate(configs):
    differ = sorted(k for k in set(seen) | set(first) if seen.get(k) != first.get(k))
    if not differ:
      continue
    shown = '; '.join(f'{k}: process 0 {first.get(k, "unset")}, process '
                      f'{other} {seen.get(k, "unset")}' for k in differ[:3])
    more = f'; and {len(differ) - 3} more' if len(differ) > 3 else ''
    raise ConfigMismatchError(
        f'the processes of this job were started with different configs '
        f'({len(differ)} {"keys differ" if len(differ) > 1 else "key differs"}: '
        f'{shown}{more}); start every process with '
        f'the same --config and overrides.')


def split_or_none(split: str | None) -> str | None:
  """A split setting, where 'None' typed on the command line means none."""
  return None if split in (None, '', 'None', 'none') else split


def eval_split(config) -> str | None:
  return split_or_none(config.get('eval_split'))


# Split names taken for evaluation, in this order of preference.
EVAL_SPLIT_NAMES = ('validation', 'val', 'valid', 'test')
# A split to hold out of train when the data has no validation or test split.
HELD_OUT_FRACTION = 0.1
MAX_HELD_OUT = 10_000


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
  if source is None or not source.describes_data:  # every value is the config's
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
      lacking = getattr(source, 'classes_without_images', lambda _: [])(split)
      if key == 'eval_split' and lacking:
        shown = ', '.join(lacking[:5]) + (', ...' if len(lacking) > 5 else '')
        log(f'warning: config.eval_split={split!r} has no images of '
            f'{len(lacking)} of the {source.num_classes} classes ({shown}); '
            f'its accuracy is over the other classes.')
      if key == 'train_split' and config.get('train_examples') != count:
        config.train_examples = count
        log(f'from the data: {count} training examples')
