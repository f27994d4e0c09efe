"""The train step: a pure function of (state, batch), jitted with explicit
shardings and a donated state.

Dropout keys derive from (rng, step) alone, and JAX's partitionable
threefry makes them independent of the mesh.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from vit_jax.training import sharding
from vit_jax.training.losses import classification_loss
from vit_jax.training.sharding import rules_of
from vit_jax.training.state import TrainSetup, TrainState

_global_norm = optax.tree.norm if hasattr(optax, 'tree') else optax.global_norm

# With the update split over the data axis, XLA:TPU may fold the gradient's
# reduce-scatter into the weight-gradient matmuls as loops of collective
# permutes over thin slices of the weights ("windowed einsum"); for
# ViT-B/16 at 128 images per chip that makes the whole step slower, and
# where the plain matmul and one reduce-scatter were compared they were as
# fast or faster in libtpu's estimate (docs/benchmarks.md).
TPU_COMPILER_OPTIONS = {'xla_tpu_enable_windowed_einsum_for_reduce_scatter': False}


def make_train_step(setup: TrainSetup) -> Callable[[TrainState, dict], tuple]:
  config, model, tx = setup.config, setup.model, setup.tx
  rules = rules_of(config)
  accum = config.accum_steps
  max_skips = config.get('skip_nonfinite_updates', 0)
  ema_decay = config.get('ema_decay')

  def loss_fn(params, images, labels, rng):
    logits = model.apply({'params': params}, images, train=True,
                         rngs={'dropout': rng})
    return classification_loss(logits, labels, kind=config.loss,
                               label_smoothing=config.label_smoothing)

  grad_fn = jax.value_and_grad(loss_fn)

  def train_step(state, batch):
    with sharding.logical_constraints(setup.mesh, rules):
      step = state.step
      rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), step)
      params = state.params
      if accum == 1:
        loss, grads = grad_fn(params, batch['images'], batch['labels'], rng)
      else:
        # Micro-batch i takes examples i, i+k, ...: every micro-batch stays
        # spread over all data-parallel devices.
        def split(x):
          x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:])
          return jnp.swapaxes(x, 0, 1)
        micro = jax.tree.map(split, (batch['images'], batch['labels']))

        def accumulate(carry, inputs):
          index, (images, labels) = inputs
          loss, grads = grad_fn(params, images, labels,
                                jax.random.fold_in(rng, index))
          return jax.tree.map(jnp.add, carry, (loss, grads)), None
        zeros = (jnp.zeros((), jnp.float32),
                 jax.tree.map(jnp.zeros_like, params))
        (loss, grads), _ = jax.lax.scan(
            accumulate, zeros, (jnp.arange(accum), micro))
        loss, grads = jax.tree.map(lambda x: x / accum, (loss, grads))
      # Where the update runs (split over the data axis with
      # config.shard_optimizer_state).
      grads = jax.lax.with_sharding_constraint(grads, setup.update_shardings)
      grad_norm = _global_norm(grads)
      updates, opt_state = tx.update(grads, state.opt_state, params)
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      # Up to `skip_nonfinite_updates` bad steps leave params and optimizer
      # state as they were; the next one stops the run.
      new_params = optax.apply_updates(params, updates)
      if max_skips:
        skip = ~finite & (state.skipped_updates < max_skips)
        keep_old = lambda new, old: jnp.where(skip, old, new)
        new_params = jax.tree.map(keep_old, new_params, params)
        opt_state = jax.tree.map(keep_old, opt_state, state.opt_state)
      else:
        # No select over the whole state on the hot path when nothing may
        # be skipped.
        skip = jnp.zeros((), bool)
      first_bad = (state.nonfinite_step < 0) & ~finite & ~skip
      ema_params = state.ema_params
      if ema_decay is not None:
        ema_params = jax.tree.map(
            lambda ema, new: ema_decay * ema + (1 - ema_decay) * new,
            ema_params, new_params)
      new_state = state.replace(
          params=new_params, opt_state=opt_state, step=step + 1,
          ema_params=ema_params,
          nonfinite_step=jnp.where(first_bad, step, state.nonfinite_step),
          nonfinite_values=jnp.where(first_bad, jnp.stack([loss, grad_norm]),
                                     state.nonfinite_values),
          skipped_updates=state.skipped_updates + skip.astype(jnp.int32))
      metrics = dict(loss=loss, grad_norm=grad_norm,
                     learning_rate=setup.schedule(step),
                     skipped_updates=new_state.skipped_updates,
                     nonfinite_step=new_state.nonfinite_step)
      return new_state, metrics

  batch_sharding = sharding.batch_sharding(setup.mesh)
  on_tpu = setup.mesh.devices.flat[0].platform == 'tpu'
  return jax.jit(
      train_step, donate_argnums=(0,),
      compiler_options=TPU_COMPILER_OPTIONS if on_tpu else None,
      in_shardings=(setup.state_shardings, batch_sharding),
      out_shardings=(setup.state_shardings, sharding.replicated(setup.mesh)))
