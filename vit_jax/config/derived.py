"""Config values left at None, derived from the others when a run starts.

Configs leave a value at None when it follows from others: the batch size
from the example count, total_steps from epochs, the warmup from
total_steps, the evaluation and checkpoint cadence from total_steps. They
are filled in here, after the data has told what only it can tell
(`vit_jax.config.resolve.resolve_from_data`), so an override of any value
moves what follows from it. Each derived value is logged in one line.
"""

from typing import Callable

from vit_jax.runtime.user_errors import ConfigError
from vit_jax.training import optim

PAPER_BATCH_SIZE = 4096
MAX_EVAL_BATCH_SIZE = 1024
# A dataset of n examples gets a power-of-two batch of at most n / 10, so
# that an epoch has at least about ten steps; never below this.
MIN_DERIVED_BATCH_SIZE = 8


def default_batch_size(train_examples: int) -> int:
  size = MIN_DERIVED_BATCH_SIZE
  while size * 2 <= min(PAPER_BATCH_SIZE, train_examples // 10):
    size *= 2
  return size


def is_filled(config) -> bool:
  """Whether every value `fill` derives is set."""
  return (None not in (config.get('batch_size'), config.get('eval_batch_size'),
                       config.get('total_steps'), config.get('checkpoint_steps', 0),
                       config.schedule.get('warmup_steps'))
          and all(spec.get('every_steps', 0) is not None
                  for spec in (config.get('evals') or {}).values()))


def fill(config, log: Callable[[str], None] = print) -> None:
  """Fills every derived value of a training config still at None."""
  derived = []
  if config.get('batch_size') is None:
    if config.get('train_examples') is None:
      raise ConfigError('config.batch_size is not set and the number of '
                        'training examples is unknown; set --config.batch_size.')
    config.batch_size = default_batch_size(config.train_examples)
    derived.append(f'batch_size {config.batch_size}')
  if config.get('eval_batch_size') is None:
    config.eval_batch_size = min(config.batch_size, MAX_EVAL_BATCH_SIZE)
  if config.get('total_steps') is None:
    if config.get('train_examples') is None:
      raise ConfigError('config.total_steps is not set and the number of '
                        'training examples is unknown; set --config.total_steps.')
    config.total_steps = max(
        1, config.epochs * config.train_examples // config.batch_size)
    derived.append(f'total_steps {config.total_steps} ({config.epochs} epochs '
                   f'of {config.train_examples} examples)')
  if config.schedule.get('warmup_steps') is None:
    config.schedule.warmup_steps = optim.warmup_steps_of(config.schedule,
                                                         config.total_steps)
    derived.append(f'warmup_steps {config.schedule.warmup_steps}')
  tenth = max(1, config.total_steps // 10)
  if config.get('checkpoint_steps', 0) is None:
    config.checkpoint_steps = tenth
    derived.append(f'checkpoint_steps {tenth}')
  for name, spec in (config.get('evals') or {}).items():
    # Evals may share one cadence (a FieldReference): filled once.
    if spec.get('every_steps', 0) is None:
      spec.every_steps = tenth
      derived.append(f'evals.{name}.every_steps {tenth}')
  if derived:
    log('derived: ' + ', '.join(derived))
  examples = config.get('train_examples')
  if examples and config.batch_size > examples:
    log(f'warning: batch_size {config.batch_size} is larger than the '
        f'{examples} training examples: every batch holds each example about '
        f'{config.batch_size / examples:.0f} times; a batch of at most '
        f'{examples} (--config.batch_size) sees each once per step.')
