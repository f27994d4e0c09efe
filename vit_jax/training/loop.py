"""The one train loop, shared by pre-training and fine-tuning.

The state is one `TrainState` (a pytree); its shapes, shardings, fresh
value and update all come from that one definition. The train step is a
pure function of (state, batch), jitted with explicit shardings and a
donated state. Dropout keys derive from (rng, step) alone, and JAX's
partitionable threefry makes them independent of the mesh.
"""

import dataclasses
import os
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vit_jax.config import checks as config_checks
from vit_jax.config import derived as derived_config
from vit_jax.config.checks import LOSSES
from vit_jax.data.inputs import TrainInput
from vit_jax.formats.npz import flatten_params, unflatten_params
from vit_jax.models import build_model
from vit_jax.runtime.preemption import Preempted, PreemptionWatcher
from vit_jax.runtime.user_errors import ConfigError
from vit_jax.training import metrics as metrics_lib
from vit_jax.training import optim
from vit_jax.training import sharding
from vit_jax.training.checkpointer import StateCheckpointer, abstract_with_shardings
from vit_jax.training.sharding import rules_of

_global_norm = optax.tree.norm if hasattr(optax, 'tree') else optax.global_norm


class NonFiniteError(RuntimeError):
  """Loss or gradient norm became NaN/Inf."""


def classification_loss(logits: jax.Array, labels: jax.Array, *, kind: str,
                        label_smoothing: float = 0.0) -> jax.Array:
  """Mean loss; `labels` are class ids (n,) or (multi-)hot targets (n, C)."""
  num_classes = logits.shape[-1]
  if labels.ndim == 1:
    labels = jax.nn.one_hot(labels, num_classes)
  labels = labels.astype(jnp.float32)
  if label_smoothing:
    labels = labels * (1 - label_smoothing) + label_smoothing / num_classes
  if kind == 'softmax_xent':
    return jnp.mean(optax.softmax_cross_entropy(logits, labels))
  if kind == 'sigmoid_xent':
    return jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(logits, labels), -1))
  raise ValueError(f'unknown loss {kind!r}; expected one of {LOSSES}.')


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds besides the input position.

  `nonfinite_step` is -1 until a loss or gradient norm first turns NaN/Inf
  and the update is not skipped; `nonfinite_values` are the loss and
  gradient norm at that step; `skipped_updates` counts the updates skipped
  under `config.skip_nonfinite_updates`."""
  params: Any
  opt_state: Any
  step: jax.Array
  rng: jax.Array  # raw key data, so checkpoints hold plain integers
  nonfinite_step: jax.Array
  nonfinite_values: jax.Array
  skipped_updates: jax.Array

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation,
             rng: jax.Array) -> 'TrainState':
    return cls(params=params, opt_state=tx.init(params),
               step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(rng),
               nonfinite_step=jnp.full((), -1, jnp.int32),
               nonfinite_values=jnp.zeros((2,), jnp.float32),
               skipped_updates=jnp.zeros((), jnp.int32))


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

  @property
  def abstract_state(self) -> TrainState:
    return abstract_with_shardings(self.state_shapes, self.state_shardings)


def make_setup(config: ml_collections.ConfigDict,
               mesh: jax.sharding.Mesh | None = None) -> TrainSetup:
  # Entry points fill (and log) the derived values earlier; this covers
  # direct callers (benchmark, AOT) of configs that leave them at None.
  derived_config.fill(config, log=lambda _: None)
  mesh = mesh or sharding.make_mesh(config.mesh)
  # The entry points have checked already; direct callers get the same
  # one-line errors (batch vs data parallelism, image vs patch size, ...).
  config_checks.check_config(config, mesh.size)
  model = build_model(config.model, config.num_classes)
  schedule = optim.make_schedule(
      total_steps=config.total_steps, **config.schedule)
  tx = optim.make_optimizer(config.optimizer, schedule)
  image_shape = (1, config.image_size, config.image_size, 3)
  boxed = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(image_shape))['params'])
  param_shardings = sharding.logical_shardings(
      mesh, nn.get_partition_spec(boxed), rules_of(config))
  shapes = jax.eval_shape(lambda: TrainState.create(
      nn.unbox(boxed), tx, jax.random.key(0)))
  replicated = jax.tree.map(lambda _: sharding.replicated(mesh), shapes)
  shardings = replicated.replace(
      params=param_shardings,
      opt_state=sharding.optimizer_state_shardings(
          tx, shapes.opt_state, param_shardings, mesh))
  return TrainSetup(config, mesh, model, tx, schedule, shapes, shardings)


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
    return TrainState.create(params, setup.tx, train_rng)

  state = jax.jit(init, out_shardings=setup.state_shardings)(seed)
  if not pretrained:
    return state
  flat = flatten_params(state.params)
  for key, value in pretrained.items():
    # Every process holds the whole array and contributes its shards.
    flat[key] = jax.make_array_from_callback(
        value.shape, flat[key].sharding, lambda index, value=value: value[index])
  with_optimizer = jax.jit(
      lambda params, state: state.replace(
          params=params, opt_state=setup.tx.init(params)),
      out_shardings=setup.state_shardings, donate_argnums=(1,))
  return with_optimizer(unflatten_params(flat), state)


def make_train_step(setup: TrainSetup) -> Callable[[TrainState, dict], tuple]:
  config, model, tx = setup.config, setup.model, setup.tx
  rules = rules_of(config)
  accum = config.accum_steps
  max_skips = config.get('skip_nonfinite_updates', 0)

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
      new_state = state.replace(
          params=new_params, opt_state=opt_state, step=step + 1,
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
  return jax.jit(
      train_step, donate_argnums=(0,),
      in_shardings=(setup.state_shardings, batch_sharding),
      out_shardings=(setup.state_shardings, sharding.replicated(setup.mesh)))


def _check_finite(state: TrainState) -> None:
  bad = int(jax.device_get(state.nonfinite_step))
  if bad >= 0:
    loss, grad_norm = (float(v) for v in jax.device_get(state.nonfinite_values))
    skipped = int(jax.device_get(state.skipped_updates))
    raise NonFiniteError(
        f'non-finite values at step {bad}: loss={loss}, grad_norm={grad_norm}'
        f' ({skipped} earlier non-finite updates skipped); the run stops '
        f'without saving, so the last checkpoint is the last good state. '
        f'Lower the learning rate, raise warmup, check the input data, or '
        f'allow a few skipped updates with --config.skip_nonfinite_updates=N.')


def check_writable(workdir: str) -> None:
  from etils import epath  # pylint: disable=g-import-not-at-top
  try:
    path = epath.Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    # Every process of a multi-host run probes the same workdir: a shared
    # name would let one process delete the file another is about to delete.
    probe = path / f'.write_test.{jax.process_index()}.{os.getpid()}'
    probe.write_text('ok')
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(
        f'workdir {workdir!r} cannot be written ({type(e).__name__}: {e}); '
        f'pass a directory you can write to (local, or gs:// with write '
        f'access).') from None


def _check_images(host_batch: dict, config) -> None:
  got = tuple(host_batch['images'].shape[1:3])
  if got != (config.image_size, config.image_size):
    raise ConfigError(
        f'the input pipeline gives {got[0]}x{got[1]} images but '
        f'config.image_size={config.image_size}; make pp_train/pp_eval end at '
        f'{{image_size}} or set --config.image_size={got[0]}.')


def train(config: ml_collections.ConfigDict, workdir: str | None, *,
          train_data: TrainInput,
          evaluators: Callable[[TrainSetup], list] | None = None,
          mesh: jax.sharding.Mesh | None = None,
          pretrained: Callable[[TrainSetup], dict] | None = None,
          log: Callable[[str], None] = print) -> tuple[TrainState, list[dict]]:
  """Trains to `config.total_steps`, resuming from `workdir` if it holds a
  checkpoint. `train_data` gives host batches (`TrainInput`).
  `evaluators(setup)` gives the evaluators (`vit_jax.evaluators`), each
  called on the parameters every `every_steps` steps and at the end.
  `pretrained(setup)` gives parameters to start from (fine-tuning); it is
  not called when the run resumes from its own checkpoint. Returns the final
  state and the logged metrics."""
  setup = make_setup(config, mesh)
  checkpointer = None
  state = None
  if workdir is not None:
    check_writable(workdir)
    checkpointer = StateCheckpointer(
        workdir, save_every=config.checkpoint_steps,
        keep=config.keep_checkpoints, keep_every=config.keep_every,
        async_save=config.async_checkpoints)
    restored = checkpointer.restore_newest_intact(setup.abstract_state, log)
    if restored is not None:
      latest, state, data_state = restored
      train_data.set_state(data_state)
      log(f'resumed from step {latest} in {workdir}')
  if state is None:
    state = init_state(setup, config.seed,
                       pretrained(setup) if pretrained else None)
  train_step = make_train_step(setup)
  running = evaluators(setup) if evaluators else []
  writer = metrics_lib.MetricWriter(workdir)
  throughput = metrics_lib.Throughput(
      batch_size=config.batch_size,
      train_flops_per_image=3 * metrics_lib.vit_forward_flops(
          config.model, config.image_size, config.num_classes),
      total_steps=config.total_steps, num_devices=setup.mesh.size)
  history = []
  watcher = PreemptionWatcher().install()
  step = int(jax.device_get(state.step))
  throughput.update(step)
  # A log step's metrics stay on the device until the next step has been
  # dispatched, so reading them never leaves the device idle. Steps that
  # also evaluate, save or end the run are read at once.
  pending = None

  def read_metrics(logged_step, device_metrics) -> dict:
    scalars = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if scalars.pop('nonfinite_step') >= 0:
      _check_finite(state)
    scalars.update(throughput.update(logged_step))
    scalars.update(train_data.metrics())
    return scalars

  def write(logged_step, scalars):
    writer.write(logged_step, scalars)
    history.append({'step': logged_step, **scalars})
    log(metrics_lib.progress_line(logged_step, config.total_steps, scalars))

  compiled = False
  try:
    while step < config.total_steps:
      host_batch = next(train_data)
      _check_images(host_batch, config)
      batch = sharding.global_batch(host_batch, setup.mesh)
      if not compiled:
        log('compiling the train step ...')
        started = time.perf_counter()
      state, step_metrics = train_step(state, batch)
      if not compiled:
        # The first call returns once the step is compiled and dispatched.
        log(f'compiled the train step in {time.perf_counter() - started:.1f} s')
        compiled = True
        throughput.restart(step)
      step += 1
      if pending is not None:
        write(pending[0], read_metrics(*pending))
        pending = None
      final = step == config.total_steps
      stop = watcher.should_stop(step) and not final
      saving = checkpointer is not None and (
          checkpointer.should_save(step, final) or stop)
      # Each cadence is its own: an eval step that is not a log step still
      # evaluates (and logs the train metrics beside the eval results).
      due = [e for e in running if final or step % e.every_steps == 0]
      if step % config.log_steps == 0 or final or due:
        if not (final or stop or saving or due):
          for value in jax.tree.leaves(step_metrics):
            value.copy_to_host_async()
          pending = (step, step_metrics)
        else:
          scalars = read_metrics(step, step_metrics)
          for evaluator in due:
            scalars.update(evaluator(state.params))
            throughput.restart(step)
          write(step, scalars)
      if saving:
        _check_finite(state)
        checkpointer.save(step, state, train_data.get_state())
      elif checkpointer is not None:
        checkpointer.check_saved()
      if stop:
        log(f'stop requested ({watcher.reason}): checkpoint at step {step}; '
            f'rerun to resume')
        raise Preempted(step)
  finally:
    watcher.uninstall()
    if checkpointer is not None:
      checkpointer.close()
    writer.close()
  return state, history
