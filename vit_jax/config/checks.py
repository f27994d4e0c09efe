"""Checks of the config values a user types, run before anything is written.

Each failure is a ConfigError whose one-line message names the key and the
value, says what is expected, and how to fix it. Values that only the data
can check (split names, class counts) are checked where the data is opened,
still before the workdir is touched.
"""

import math
from typing import Any

from vit_jax import evaluators
from vit_jax.formats import exporters
from vit_jax.models import resnet, vit
from vit_jax.models.variants import get_model_config
from vit_jax.runtime.user_errors import ConfigError
from vit_jax.training import losses, optim
from vit_jax.training.sharding import resolve_mesh_shape

DTYPES = ('float32', 'bfloat16', 'float16')


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(key: str, value: Any) -> None:
  if not _is_int(value) or value < 1:
    raise ConfigError(f'config.{key}={value!r}: expected a whole number >= 1; '
                      f'set --config.{key}=N with N >= 1.')


def _non_negative_int(key: str, value: Any) -> None:
  if not _is_int(value) or value < 0:
    raise ConfigError(f'config.{key}={value!r}: expected a whole number >= 0; '
                      f'set --config.{key}=N with N >= 0.')


def _number(key: str, value: Any, *, low: float, high: float = math.inf,
            low_open: bool = False, high_open: bool = False) -> None:
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high))
  if not ok:
    bounds = (f'{"(" if low_open else "["}{low:g}, {high:g}'
              f'{")" if high_open else "]"}')
    raise ConfigError(f'config.{key}={value!r}: expected a number in {bounds}; '
                      f'set --config.{key} to one.')


def _one_of(key: str, value: Any, allowed) -> None:
  if value not in allowed:
    raise ConfigError(f'config.{key}={value!r}: expected one of '
                      f'{list(allowed)}; set --config.{key} to one of them.')


def check_model(model_config, image_size: int) -> None:
  name = model_config.get('name')
  try:
    get_model_config(name)
  except (ValueError, AttributeError, TypeError) as e:
    raise ConfigError(f'config.model.name={name!r}: {e} Choose the model with '
                      f'the config argument, e.g. configs/pretrain.py:model=B/16.'
                      ) from None
  for key in ('hidden_size', 'mlp_dim', 'num_heads', 'num_layers'):
    _positive_int(f'model.{key}', model_config[key])
  if model_config.hidden_size % model_config.num_heads:
    raise ConfigError(
        f'config.model.hidden_size={model_config.hidden_size} is not divisible '
        f'by config.model.num_heads={model_config.num_heads}; choose a head '
        f'count that divides the width.')
  patch = tuple(model_config.patch_size)
  if len(patch) != 2 or not all(_is_int(p) and p >= 1 for p in patch):
    raise ConfigError(f'config.model.patch_size={patch!r}: expected two whole '
                      f'numbers >= 1, e.g. --config.model.patch_size="(16, 16)".')
  bad = vit.bad_option(model_config)
  if bad:
    _one_of(f'model.{bad[0]}', bad[1], bad[2])
  _one_of('model.dtype', model_config.dtype, DTYPES)
  for key in ('dropout_rate', 'attention_dropout_rate', 'stochastic_depth'):
    _number(f'model.{key}', model_config[key], low=0., high=1., high_open=True)
  stages = model_config.get('resnet_layers')
  stride = 1 if stages is None else resnet.stem_stride(stages)
  multiple = (patch[0] * stride, patch[1] * stride)
  if image_size % multiple[0] or image_size % multiple[1]:
    raise ConfigError(
        f'config.image_size={image_size} is not a multiple of the patch size '
        f'{patch} x stem stride {stride}: the last pixels would be dropped. '
        f'Set --config.image_size to a multiple of {max(multiple)}.')


# Keys a config may leave at None until vit_jax.config.derived fills them.
DERIVED_KEYS = ('batch_size', 'eval_batch_size', 'total_steps',
                'checkpoint_steps', 'num_classes', 'train_examples')


def _check_evals(config) -> None:
  for name, spec in (config.get('evals') or {}).items():
    if not evaluators.known_type(spec.get('type')):
      raise ConfigError(
          f'config.evals.{name}.type={spec.get("type")!r}: expected one of '
          f'{", ".join(evaluators.builtin_types())} or the dotted path of an '
          f'evaluator module; set --config.evals.{name}.type.')
    if spec.get('every_steps') is not None:  # None: derived; 0: off
      _non_negative_int(f'evals.{name}.every_steps', spec.every_steps)


def check_config(config, num_devices: int) -> None:
  """Every user-typed value of a training config (pre-training or
  fine-tuning) that can be checked without the data. Derived values still
  at None are skipped; the entry points check again once they are filled."""
  for key in ('batch_size', 'eval_batch_size', 'total_steps', 'log_steps',
              'checkpoint_steps', 'accum_steps', 'image_size',
              'keep_checkpoints', 'num_classes', 'train_examples', 'epochs'):
    if key in config and not (key in DERIVED_KEYS and config[key] is None):
      _positive_int(key, config[key])
  for key in ('keep_every', 'skip_nonfinite_updates', 'seed'):
    if key in config:
      _non_negative_int(key, config[key])
  _check_evals(config)
  if config.get('shuffle_buffer') is not None:
    _positive_int('shuffle_buffer', config.shuffle_buffer)
  _one_of('loss', config.loss, losses.LOSSES)
  _number('label_smoothing', config.get('label_smoothing', 0.), low=0., high=1.,
          high_open=True)

  schedule = config.schedule
  _number('schedule.base_lr', schedule.base_lr, low=0., low_open=True)
  _number('schedule.end_lr', schedule.get('end_lr', 0.), low=0.)
  _one_of('schedule.decay_type', schedule.get('decay_type', 'cosine'),
          optim.SCHEDULES)
  if schedule.get('warmup_steps') is not None:
    _non_negative_int('schedule.warmup_steps', schedule.warmup_steps)
  if None not in (schedule.get('warmup_steps'), config.total_steps) and (
      schedule.warmup_steps > config.total_steps):
    raise ConfigError(
        f'config.schedule.warmup_steps={schedule.warmup_steps} exceeds '
        f'config.total_steps={config.total_steps}; set --config.schedule.'
        f'warmup_steps to at most {config.total_steps} (e.g. '
        f'{config.total_steps // 10}).')

  _positive_int('repeated_augmentation', config.get('repeated_augmentation', 1))

  if config.get('ema_decay') is not None:
    _number('ema_decay', config.ema_decay, low=0., high=1., high_open=True)

  optimizer = config.optimizer
  _one_of('optimizer.name', optimizer.name, optim.OPTIMIZERS)
  _number('optimizer.weight_decay', optimizer.get('weight_decay', 0.), low=0.)
  if optimizer.get('layer_decay') is not None:
    _number('optimizer.layer_decay', optimizer.layer_decay, low=0., high=1.,
            low_open=True)
  if optimizer.get('grad_clip_norm') is not None:
    _number('optimizer.grad_clip_norm', optimizer.grad_clip_norm, low=0.)
  _one_of('optimizer.first_moment_dtype', optimizer.get('first_moment_dtype'),
          (None, *DTYPES))

  try:
    mesh = dict(config.mesh)
    for axis, size in mesh.items():
      if not _is_int(size) or (size < 1 and size != -1):
        raise ValueError(f'axis {axis!r} has size {size!r}; expected a whole '
                         f'number >= 1, or -1 for the rest of the devices.')
    sizes = dict(zip(('data', 'fsdp', 'tensor'),
                     resolve_mesh_shape(mesh, num_devices)))
  except ValueError as e:
    raise ConfigError(f'config.mesh={dict(config.mesh)}: {e}') from None
  data_parallel = sizes['data'] * sizes['fsdp']
  for key in ('batch_size', 'eval_batch_size'):
    if config[key] is None:
      continue
    multiple = data_parallel * (config.accum_steps if key == 'batch_size' else 1)
    if config[key] % multiple:
      what = (f'data-parallel size {data_parallel} x accum_steps '
              f'{config.accum_steps}' if key == 'batch_size' else
              f'data-parallel size {data_parallel}')
      raise ConfigError(
          f'config.{key}={config[key]} is not divisible by the {what}; set '
          f'--config.{key} to a multiple of {multiple}.')
  check_model(config.model, config.image_size)
  if config.get('export'):
    check_export(config.export, config.model)


def check_export(export: str, model_config) -> None:
  for name in exporters.names_in(export):
    _one_of('export', name, exporters.EXPORTERS)
    refusal = exporters.refusal(name, model_config)
    if refusal:
      raise ConfigError(
          f'config.export={export!r}: the model cannot be exported as '
          f'{name!r}: {refusal}. Drop {name!r} from --config.export.')
