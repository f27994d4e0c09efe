"""The train state and everything a run derives from its config before any
array is allocated.

The state is one `TrainState` (a pytree); its shapes, shardings and fresh
value all come from that one definition, and it is created directly in its
shardings.
"""

import dataclasses
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vit_jax.config import derived, resolve
from vit_jax.formats.npz import flatten_params, unflatten_params
from vit_jax.models import build_model
from vit_jax.training import optim
from vit_jax.training import sharding
from vit_jax.training.checkpointer import abstract_with_shardings
from vit_jax.training.sharding import rules_of


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds besides the input position.

  `nonfinite_step` is -1 until a loss or gradient norm first turns NaN/Inf
  and the update is not skipped; `nonfinite_values` are the loss and
  gradient norm at that step; `skipped_updates` counts the updates skipped
  under `config.skip_nonfinite_updates`. `ema_params` is the exponential
  moving average of the parameters when `config.ema_decay` is set (as DeiT
  and timm keep it: started at the initial parameters, then
  ema = decay * ema + (1 - decay) * params after every step), else None."""
  params: Any
  opt_state: Any
  step: jax.Array
  rng: jax.Array  # raw key data, so checkpoints hold plain integers
  nonfinite_step: jax.Array
  nonfinite_values: jax.Array
  skipped_updates: jax.Array
  ema_params: Any = None

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation,
             rng: jax.Array, ema: bool = False) -> 'TrainState':
    return cls(params=params, opt_state=tx.init(params),
               step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(rng),
               nonfinite_step=jnp.full((), -1, jnp.int32),
               nonfinite_values=jnp.zeros((2,), jnp.float32),
               skipped_updates=jnp.zeros((), jnp.int32),
               # Shapes here; `init_state` starts the average at the params.
               ema_params=jax.tree.map(jnp.zeros_like, params) if ema else None)


@dataclasses.dataclass
class TrainSetup:
  """Everything derived from a config before any array is allocated."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  model: nn.Module
  tx: optax.GradientTransformation
  schedule: Callable[[jax.Array], jax.Array]
  state_shapes: TrainState
  state_shardings: TrainState
  # Where the gradient and the optimizer update of each parameter live
  # (sharding.update_shardings when config.shard_optimizer_state, else the
  # parameters' own shardings).
  update_shardings: Any

  @property
  def abstract_state(self) -> TrainState:
    return abstract_with_shardings(self.state_shapes, self.state_shardings)


def make_setup(config: ml_collections.ConfigDict,
               mesh: jax.sharding.Mesh | None = None) -> TrainSetup:
  """Model, optimizer, mesh and state shapes and shardings for a resolved
  config (`vit_jax.config.resolve`, which every entry point calls once). A
  config with values still at None (a direct caller's) is resolved here,
  quietly and without data."""
  mesh = mesh or sharding.make_mesh(config.mesh)
  if not derived.is_filled(config):
    resolve.resolve(config, None, log=lambda _: None, num_devices=mesh.size)
  model = build_model(config.model, config.num_classes)
  schedule = optim.make_schedule(
      total_steps=config.total_steps, **config.schedule)
  tx = optim.make_optimizer(config.optimizer, schedule)
  image_shape = (1, config.image_size, config.image_size, 3)
  boxed = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(image_shape))['params'])
  param_shardings = sharding.logical_shardings(
      mesh, nn.get_partition_spec(boxed), rules_of(config))
  ema = config.get('ema_decay') is not None
  shapes = jax.eval_shape(lambda: TrainState.create(
      nn.unbox(boxed), tx, jax.random.key(0), ema=ema))
  replicated = jax.tree.map(lambda _: sharding.replicated(mesh), shapes)
  updates = (sharding.update_shardings(param_shardings, shapes.params)
             if config.get('shard_optimizer_state') else param_shardings)
  shardings = replicated.replace(
      params=param_shardings,
      ema_params=param_shardings if ema else None,
      opt_state=sharding.optimizer_state_shardings(
          tx, shapes.opt_state, updates, mesh))
  return TrainSetup(config, mesh, model, tx, schedule, shapes, shardings,
                    updates)


def _ema_from(state: TrainState, params) -> TrainState:
  """The moving average started at `params` (inside a jitted function)."""
  if state.ema_params is None:
    return state
  return state.replace(ema_params=jax.tree.map(jnp.copy, params))


def init_state(setup: TrainSetup, seed: int,
               pretrained: dict[str, np.ndarray] | None = None) -> TrainState:
  """A fresh state, created directly in its shardings. `pretrained` (flat
  'a/b/c' names -> host arrays, e.g. from vit_jax.formats.transfer) replaces those
  parameters; the optimizer state is then initialized from the result."""
  config, model = setup.config, setup.model

  def init(seed):
    init_rng, train_rng = jax.random.split(jax.random.key(seed))
    images = jnp.zeros((1, config.image_size, config.image_size, 3))
    params = nn.unbox(model.init(init_rng, images)['params'])
    state = TrainState.create(params, setup.tx, train_rng,
                              ema=config.get('ema_decay') is not None)
    return _ema_from(state, params)

  state = jax.jit(init, out_shardings=setup.state_shardings)(seed)
  if not pretrained:
    return state
  flat = flatten_params(state.params)
  for key, value in pretrained.items():
    # Every process holds the whole array and contributes its shards.
    flat[key] = jax.make_array_from_callback(
        value.shape, flat[key].sharding, lambda index, value=value: value[index])
  with_optimizer = jax.jit(
      lambda params, state: _ema_from(state.replace(
          params=params, opt_state=setup.tx.init(params)), params),
      out_shardings=setup.state_shardings, donate_argnums=(1,))
  return with_optimizer(unflatten_params(flat), state)
