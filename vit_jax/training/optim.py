"""Optimizer and learning-rate schedule from the `optimizer` / `schedule`
sections of a config.

Weight decay follows the ViT paper's convention: it is multiplied by the
learning rate (as in `optax.adamw`), so 0.1 at lr 1e-3 removes 1e-4 of each
decayed weight per step. Which weights decay is a regex list over '/'-joined
parameter names; biases, norms, position embeddings and the class token are
excluded by default.
"""

import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax.formats.npz import flatten_params, unflatten_params

OPTIMIZERS = ('adam', 'sgd', 'adafactor')
SCHEDULES = ('cosine', 'linear', 'rsqrt', 'constant')

# Parameters that never decay unless the config says otherwise.
DEFAULT_NO_DECAY = (r'.*/bias$', r'.*/scale$', r'.*pos_embedding$', r'^cls$',
                    r'.*/probe$')


def warmup_steps_of(schedule_config: Mapping[str, Any], total_steps: int) -> int:
  """`warmup_steps`, or when it is None `warmup_fraction` of the total
  steps, at most `max_warmup_steps`: so the warmup follows an overridden
  step count."""
  if schedule_config.get('warmup_steps') is not None:
    return schedule_config['warmup_steps']
  steps = int(total_steps * schedule_config.get('warmup_fraction', 0.0))
  cap = schedule_config.get('max_warmup_steps')
  return steps if cap is None else min(cap, steps)


def make_schedule(*, base_lr: float, total_steps: int,
                  warmup_steps: int | None = None,
                  decay_type: str = 'cosine', end_lr: float = 0.0,
                  warmup_fraction: float = 0.0,
                  max_warmup_steps: int | None = None,
                  ) -> Callable[[jax.Array], jax.Array]:
  """Linear warmup from 0 to `base_lr`, then `decay_type` down to `end_lr`.
  The warmup length is `warmup_steps_of` these arguments."""
  warmup_steps = warmup_steps_of(
      dict(warmup_steps=warmup_steps, warmup_fraction=warmup_fraction,
           max_warmup_steps=max_warmup_steps), total_steps)
  if decay_type not in SCHEDULES:
    raise ValueError(f'unknown schedule decay_type {decay_type!r}; expected '
                     f'one of {SCHEDULES}.')
  if warmup_steps > total_steps:
    raise ValueError(f'warmup_steps={warmup_steps} exceeds total_steps='
                     f'{total_steps}; shorten the warmup or train longer.')

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warmup = base_lr * step / max(warmup_steps, 1)
    progress = jnp.clip((step - warmup_steps) /
                        max(total_steps - warmup_steps, 1), 0., 1.)
    if decay_type == 'cosine':
      decayed = end_lr + (base_lr - end_lr) * 0.5 * (1 + jnp.cos(jnp.pi * progress))
    elif decay_type == 'linear':
      decayed = base_lr + (end_lr - base_lr) * progress
    elif decay_type == 'rsqrt':
      # Without a warmup the timescale is one step: base_lr at steps 0 and
      # 1, then base_lr / sqrt(step); rsqrt(0) would be an infinite rate.
      timescale = max(warmup_steps, 1)
      decayed = base_lr * jax.lax.rsqrt(jnp.maximum(step, timescale) / timescale)
    else:
      decayed = jnp.full_like(step, base_lr)
    return jnp.where(step < warmup_steps, warmup, decayed)

  return schedule


def decay_mask(params: Any, no_decay: Sequence[str]) -> Any:
  """True for every parameter whose name matches none of `no_decay`."""
  patterns = [re.compile(p) for p in no_decay]
  flat = flatten_params(params)
  return unflatten_params(
      {k: not any(p.fullmatch(k) for p in patterns) for k in flat})


# Parameters before the first encoder block: the patch embedding (or a
# hybrid's ResNet stem), the class token and the position embedding.
_EMBEDDING = re.compile(r'^(embedding|cls|conv_root|gn_root|block\d+|'
                        r'pos_embedding|Transformer/posembed_input)(/|$)')
_BLOCK = re.compile(r'^Transformer/encoderblock_(\d+)/')
_SCANNED_BLOCKS = re.compile(r'^Transformer/encoderblock/')


def layer_decay_multipliers(params: Any, decay: float) -> Any:
  """Layer-wise learning-rate decay as MAE fine-tunes ViTs (He et al. 2022,
  `param_groups_lrd`; BEiT's scheme): with L encoder blocks, block i
  (0-based) gets decay^(L - i), the embeddings (patch embedding or hybrid
  stem, class token, position embedding) decay^(L + 1), and what follows
  the blocks (the final norm, pre-logits, head) 1. Scanned blocks (a
  leading layer axis) get one multiplier per layer along that axis."""
  flat = flatten_params(params)
  depths = [int(m.group(1)) + 1 for m in map(_BLOCK.match, flat) if m]
  scanned = [np.shape(v)[0] for k, v in flat.items() if _SCANNED_BLOCKS.match(k)]
  num_layers = max(depths + scanned, default=0)

  def multiplier(name, value):
    block = _BLOCK.match(name)
    if block:
      return decay ** (num_layers - int(block.group(1)))
    if _SCANNED_BLOCKS.match(name):
      per_layer = decay ** (num_layers - np.arange(num_layers, dtype=np.float64))
      return per_layer.reshape((-1,) + (1,) * (np.ndim(value) - 1)).astype(np.float32)
    if _EMBEDDING.match(name):
      return decay ** (num_layers + 1)
    return 1.0
  return unflatten_params({k: multiplier(k, v) for k, v in flat.items()})


def scale_by_layer_decay(decay: float) -> optax.GradientTransformation:
  """Multiplies each parameter's update by its `layer_decay_multipliers`."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    multipliers = layer_decay_multipliers(updates, decay)
    return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates,
                        multipliers), state
  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(optimizer_config: Mapping[str, Any],
                   schedule: Callable[[jax.Array], jax.Array]
                   ) -> optax.GradientTransformation:
  """Clip -> base optimizer -> weight decay (masked) -> -lr -> zero for
  frozen parameters. Frozen parameters (`freeze`, regexes over their names)
  are left out of the global-norm clip, as in big_vision's optax.make, so
  their gradients do not shrink the trainable parameters' updates."""
  name = optimizer_config['name']
  if name not in OPTIMIZERS:
    raise ValueError(f'unknown optimizer {name!r}; expected one of '
                     f'{OPTIMIZERS}.')
  chain = []
  freeze = tuple(optimizer_config.get('freeze', ()))
  # True for every parameter no `freeze` regex fully matches.
  trainable = lambda p: decay_mask(p, freeze)  # pylint: disable=unnecessary-lambda-assignment
  clip = optimizer_config.get('grad_clip_norm')
  if clip:
    chain.append(optax.masked(optax.clip_by_global_norm(clip), trainable)
                 if freeze else optax.clip_by_global_norm(clip))
  moment_dtype = optimizer_config.get('first_moment_dtype') or None
  if name == 'adam':
    chain.append(optax.scale_by_adam(
        b1=optimizer_config.get('b1', 0.9), b2=optimizer_config.get('b2', 0.999),
        eps=optimizer_config.get('eps', 1e-8), mu_dtype=moment_dtype))
  elif name == 'sgd':
    chain.append(optax.trace(decay=optimizer_config.get('momentum', 0.9),
                             accumulator_dtype=moment_dtype))
  else:
    chain.append(optax.scale_by_factored_rms(
        decay_rate=optimizer_config.get('b2', 0.8)))
  weight_decay = optimizer_config.get('weight_decay', 0.0)
  if weight_decay:
    no_decay = tuple(optimizer_config.get('no_decay', DEFAULT_NO_DECAY))
    chain.append(optax.add_decayed_weights(
        weight_decay, mask=lambda p: decay_mask(p, no_decay)))
  chain.append(optax.scale_by_learning_rate(schedule))
  layer_decay = optimizer_config.get('layer_decay')
  if layer_decay is not None:
    # After the learning rate: the decoupled weight decay shrinks with it.
    chain.append(scale_by_layer_decay(layer_decay))
  if freeze:
    # Parameters whose name fully matches a `freeze` regex never move.
    chain.append(optax.masked(optax.set_to_zero(), lambda p: jax.tree.map(
        lambda moves: not moves, trainable(p))))
  return optax.chain(*chain)
