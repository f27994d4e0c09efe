"""The one train loop, shared by pre-training and fine-tuning: restore or
create the state, step, log, evaluate and checkpoint on their cadences.
"""

import os
import time
from typing import Callable

from etils import epath
import jax
import ml_collections

from vit_jax.data.inputs import TrainInput
from vit_jax.models import flops
from vit_jax.runtime.preemption import InterruptedAtOnce, Preempted, PreemptionWatcher
from vit_jax.runtime.user_errors import ConfigError
from vit_jax.training import metrics as metrics_lib
from vit_jax.training import sharding
from vit_jax.training.checkpointer import StateCheckpointer
from vit_jax.training.state import TrainSetup, TrainState, init_state, make_setup
from vit_jax.training.step import make_train_step


class NonFiniteError(RuntimeError):
  """Loss or gradient norm became NaN/Inf."""


def _check_finite(state: TrainState, restored: tuple[int, str] | None) -> None:
  """Raises NonFiniteError once a step went NaN/Inf. `restored` (step,
  folder) is the checkpoint this run resumed from: a NaN in the first step
  after it points at that checkpoint, not at the training."""
  bad = int(jax.device_get(state.nonfinite_step))
  if bad >= 0:
    loss, grad_norm = (float(v) for v in jax.device_get(state.nonfinite_values))
    skipped = int(jax.device_get(state.skipped_updates))
    if restored is not None and bad == restored[0]:
      raise NonFiniteError(
          f'non-finite values at step {bad}, the first step after restoring '
          f'the checkpoint of step {bad}: loss={loss}, grad_norm={grad_norm}. '
          f'That checkpoint is the likely cause (damaged, or saved from a '
          f'state about to diverge); move {restored[1]}/{bad} aside to resume '
          f'from the one before it.')
    raise NonFiniteError(
        f'non-finite values at step {bad}: loss={loss}, grad_norm={grad_norm}'
        f' ({skipped} earlier non-finite updates skipped); the run stops '
        f'without saving, so the last checkpoint is the last good state. '
        f'Lower the learning rate, raise warmup, check the input data, or '
        f'allow a few skipped updates with --config.skip_nonfinite_updates=N.')


def check_writable(workdir: str) -> None:
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
  resumed = None
  if workdir is not None:
    check_writable(workdir)
    checkpointer = StateCheckpointer(
        workdir, save_every=config.checkpoint_steps,
        keep=config.keep_checkpoints, keep_every=config.keep_every,
        async_save=config.async_checkpoints)
    restored = checkpointer.restore_newest_intact(
        setup.abstract_state, log,
        restart_if_unrestorable=config.get('restart_if_unrestorable', False))
    if restored is not None:
      latest, state, data_state = restored
      train_data.set_state(data_state)
      resumed = (latest, checkpointer.directory)
      log(f'resumed from step {latest} in {workdir}')
  if state is None:
    state = init_state(setup, config.seed,
                       pretrained(setup) if pretrained else None)
  train_step = make_train_step(setup)
  running = evaluators(setup) if evaluators else []
  writer = metrics_lib.MetricWriter(workdir)
  throughput = metrics_lib.Throughput(
      batch_size=config.batch_size,
      train_flops_per_image=flops.train_flops(
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
      _check_finite(state, resumed)
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
            if state.ema_params is not None:
              scalars.update(metrics_lib.ema_keys(evaluator(state.ema_params)))
            throughput.restart(step)
          write(step, scalars)
      if saving:
        _check_finite(state, resumed)
        # Logs as durable as the checkpoint: a rerun resumes after `step`,
        # so no record up to it may be lost with an unflushed object.
        writer.flush()
        checkpointer.save(step, state, train_data.get_state())
      elif checkpointer is not None:
        checkpointer.check_saved()
      if stop:
        log(f'stop requested ({watcher.reason}): checkpoint at step {step}; '
            f'rerun to resume')
        raise Preempted(step)
  except KeyboardInterrupt:
    # A second Ctrl-C: closing the checkpointer would wait for a save in
    # flight; the user asked to stop at once.
    in_flight = checkpointer.step_being_saved() if checkpointer else None
    checkpointer = None
    raise InterruptedAtOnce(in_flight) from None
  finally:
    watcher.uninstall()
    writer.close()
    if checkpointer is not None:
      try:
        checkpointer.close()  # waits for a save in flight
      except KeyboardInterrupt:
        # A second Ctrl-C while the stop's checkpoint is being written.
        raise InterruptedAtOnce(checkpointer.step_being_saved()) from None
  return state, history
