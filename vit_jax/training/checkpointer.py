"""Train-state checkpoints with orbax: periodic async saves, retention,
automatic resume, and restore onto any mesh.

A checkpoint holds the whole train state (params, optimizer state, step,
rng) and the input pipeline's position, so a resumed run replays nothing
and skips nothing.
"""

import json
import logging
import os
import re
import sys
import threading
from typing import Any

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from etils import epath

from vit_jax.runtime import coordination
from vit_jax.runtime.paths import absolute_path
from vit_jax.runtime.user_errors import UserError
from vit_jax.training import checksums


class _SaveFailureEchoes(logging.Filter):
  """What a failing background save prints besides its error, held back.

  orbax logs the failure once from each of its save threads, with
  tracebacks, before the run learns of it; the run then stops with one line
  naming the cause (CheckpointSaveError), and these records are dropped.
  Records held during a save that ends well are let through when that is
  known. (TensorStore writes that complete after orbax's event loop has
  closed report 'Event loop is closed' as unraisable: see
  _drop_closed_loop_callbacks.)"""

  def __init__(self):
    super().__init__()
    self.held: list[logging.LogRecord] = []

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR and '/orbax/' in record.pathname:
      self.held.append(record)
      return False
    return True

  def release(self) -> None:
    held, self.held = self.held, []
    for record in held:
      logging.getLogger('absl').callHandlers(record)

  def drop(self) -> None:
    self.held = []


_ECHOES = _SaveFailureEchoes()


def _drop_closed_loop_callbacks(unraisable) -> None:
  if not (isinstance(unraisable.exc_value, RuntimeError) and
          str(unraisable.exc_value) == 'Event loop is closed'):
    _previous_unraisablehook(unraisable)


_previous_unraisablehook = sys.unraisablehook


def _hold_save_failure_echoes() -> None:
  if _ECHOES not in logging.getLogger('absl').filters:
    logging.getLogger('absl').addFilter(_ECHOES)
    sys.unraisablehook = _drop_closed_loop_callbacks


class StateCheckpointer:
  """Saves every `save_every` steps; keeps the last `keep` plus every
  `keep_every`-th step forever."""

  def __init__(self, workdir: str, *, save_every: int, keep: int,
               keep_every: int | None = None, async_save: bool = True):
    # A relative local workdir (`--workdir run`) is taken from the working
    # directory.
    directory = epath.Path(absolute_path(workdir)) / 'checkpoints'
    self._directory = directory
    self._save_every = save_every
    self._saving = None  # the step of the last save started
    self._checked = None  # the step of the last save checked for errors
    self._manifested = None  # the last step given its checksums
    self._manifest_writer = None  # the thread writing them
    _hold_save_failure_echoes()
    self._manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=1,  # the cadence is decided by `should_save`
            max_to_keep=keep,
            keep_period=keep_every or None,
            enable_async_checkpointing=async_save,
            create=True),
        item_names=('state', 'data'),
        # Handlers up front, so that metadata (shapes) can be read before
        # a restore.
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': ocp.JsonCheckpointHandler()})

  @property
  def directory(self) -> str:
    """The folder the step folders are in (workdir/checkpoints)."""
    return str(self._directory)

  def should_save(self, step: int, final: bool = False) -> bool:
    return final or step % self._save_every == 0

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict[str, Any]) -> None:
    self.check_saved()
    previous, self._saving = self._saving, step
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(data_state)))
    except Exception as e:  # pylint: disable=broad-except
      # orbax first waits for the previous save: an error there is its.
      failed = previous if previous not in (None, self._checked) else step
      raise self._save_error(e, failed) from e
    if previous is not None:
      self._write_checksums(previous)  # orbax has waited for it to commit

  def step_being_saved(self) -> int | None:
    """The step whose save is still being written in the background."""
    return self._saving if self._manager.is_saving_in_progress() else None

  def check_saved(self) -> None:
    """Raises CheckpointSaveError as soon as a background save has ended in
    failure (orbax would raise it only at the next save, one interval on)."""
    if self._saving is None or self._checked == self._saving:
      return
    if self._manager.is_saving_in_progress():
      return
    self._wait_for_save()  # it has ended: returns or raises at once

  def _wait_for_save(self) -> None:
    self._checked = self._saving
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(e, self._saving) from e
    _ECHOES.release()
    if self._saving is not None:
      self._write_checksums(self._saving)

  def _write_checksums(self, step: int) -> None:
    """checksums.json for a committed step, on process 0, in a background
    thread (it reads the checkpoint back); one at a time."""
    if jax.process_index() != 0 or step == self._manifested:
      return
    self._manifested = step
    if self._manifest_writer is not None:
      self._manifest_writer.join()
    folder = self._directory / str(step)

    def write():
      try:
        checksums.write_manifest(folder)
      except FileNotFoundError:
        pass  # deleted meanwhile by the retention policy
      except Exception as e:  # pylint: disable=broad-except
        logging.getLogger('absl').warning(
            'no checksums for the checkpoint of step %d: %s', step, e)
    self._manifest_writer = threading.Thread(target=write, daemon=True)
    self._manifest_writer.start()

  def _save_error(self, error: BaseException, step: int) -> UserError:
    _ECHOES.drop()
    gone = (coordination.peer_gone_cause(error)
            if jax.process_count() > 1 else None)
    if gone:  # not the storage: the save's collectives lost a process
      return PeerGoneError(coordination.peer_gone_message(
          gone, coordination.silent_processes()))
    return CheckpointSaveError(
        f'saving the checkpoint of step {step} to {self._directory} failed: '
        f'{root_cause(error)}; free space or fix access there, then rerun to '
        f'resume from the last saved checkpoint.')

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores onto the shardings of `abstract_state`
    (ShapeDtypeStructs with `.sharding`), resharding as needed."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore()))
    return restored['state'], restored['data']

  def restore_newest_intact(self, abstract_state: Any, log=print, *,
                            restart_if_unrestorable: bool = False
                            ) -> tuple[int, Any, dict] | None:
    """(step, state, data state) of the newest checkpoint that restores, or
    None when there is none. When there are checkpoints but none restores
    (or only damaged ones are left from an earlier attempt), the run stops
    with NoUsableCheckpointError, unless `restart_if_unrestorable` says to
    start over. A damaged checkpoint (a write cut short,
    missing or truncated files) is reported and moved aside to
    `<step>.damaged`, never deleted, and the previous one is tried. With
    several processes that takes every process failing to read it: one
    that reads it while another cannot means an access problem on that
    host, not damage, and the run stops with that host's error."""
    steps = sorted(self._manager.all_steps())
    agree_on_steps(steps, self._directory)
    for step in reversed(steps):
      self._check_param_shapes(step, abstract_state)
      try:
        checksums.verify_manifest(self._directory / str(step))
        state, data_state = self.restore(step, abstract_state)
        return step, state, data_state
      except Exception as e:  # pylint: disable=broad-except
        reason = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        reason = f'{type(e).__name__}: {reason}'
        agree_damaged(step, reason, self._directory)
        log(f'checkpoint at step {step} in {self._directory} cannot be '
            f'restored ({reason}); keeping it as {step}.damaged and trying '
            f'the previous one')
        self._set_aside(step)
    damaged = sorted(p.name for p in self._directory.iterdir()
                     if '.damaged' in p.name) if self._directory.exists() else []
    if damaged and not restart_if_unrestorable:
      raise NoUsableCheckpointError(
          f'no checkpoint in {self._directory} can be restored (set aside: '
          f'{", ".join(damaged)}); to start this run over from step 0, rerun '
          f'with --config.restart_if_unrestorable=True, or use another '
          f'--workdir.')
    if damaged:
      log(f'no checkpoint in {self._directory} can be restored; starting '
          f'over from step 0 (restart_if_unrestorable)')
    return None

  def _check_param_shapes(self, step: int, abstract_state: Any) -> None:
    """A checkpoint of another model is a config error, not damage: say so
    instead of setting the checkpoint aside."""
    try:
      saved = self._manager.item_metadata(step)['state']
      saved = _param_shapes(saved)
    except Exception:  # pylint: disable=broad-except
      return  # unreadable metadata: the restore will report the damage
    expected = _param_shapes(abstract_state)
    if not saved or saved == expected:
      return
    differ = [f'{k.removeprefix("params/")} (checkpoint {saved.get(k)}, '
              f'config {expected.get(k)})'
              for k in sorted(set(saved) | set(expected))
              if saved.get(k) != expected.get(k)]
    shown = '; '.join(differ[:3]) + (f'; and {len(differ) - 3} more'
                                     if len(differ) > 3 else '')
    raise CheckpointConfigError(
        f'the checkpoint at step {step} in {self._directory} was written by a '
        f'model of another shape than config.model describes: {len(differ)} '
        f'parameters differ: {shown}. Resume with the config it was trained '
        f'with, or use a new --workdir (to start from these weights, '
        f'fine-tune with init_from).')

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      path = self._directory / str(step)
      target = self._directory / f'{step}.damaged'
      suffix = 1
      while target.exists():
        target = self._directory / f'{step}.damaged.{suffix}'
        suffix += 1
      path.rename(target)
    multihost_utils.sync_global_devices(f'checkpoint {step} set aside')
    self._manager.reload()

  def wait(self) -> None:
    self._wait_for_save()

  def close(self) -> None:
    self._wait_for_save()
    if self._manifest_writer is not None:
      self._manifest_writer.join()
    self._manager.close()


class NoUsableCheckpointError(UserError):
  """The workdir has checkpoints, and none of them restores."""


class PeerGoneError(UserError):
  """Another process of the job went away during a save."""


class CheckpointSaveError(UserError):
  """A checkpoint could not be written (disk full, no permission, ...)."""


def root_cause(error: BaseException) -> str:
  """The first OSError in the chain of causes (e.g. `[Errno 28] No space
  left on device`), else the innermost error, as one line."""
  seen, queue, last = set(), [error], error
  while queue:
    e = queue.pop(0)
    if id(e) in seen:
      continue
    seen.add(id(e))
    if isinstance(e, OSError) and e.strerror:
      return f'{type(e).__name__}: [Errno {e.errno}] {e.strerror}'
    last = e
    queue += [c for c in (e.__cause__, e.__context__) if c is not None]
    queue += list(getattr(e, 'exceptions', ()))
  text = str(last).splitlines()[0] if str(last) else ''
  # TensorStore reports an OS error as text: '... [os_error_code=28]'.
  code = re.search(r"os_error_code='?(\d+)", text)
  if code:
    number = int(code.group(1))
    return f'OSError: [Errno {number}] {os.strerror(number)}'
  return f'{type(last).__name__}: {text[:300]}' if text else type(last).__name__


class WorkdirNotSharedError(UserError):
  """The processes of one run see different checkpoints in the workdir."""


def agree_on_steps(steps: list[int], directory) -> None:
  """Raises WorkdirNotSharedError on every process unless all see the same
  checkpoint steps. A process that sees none would start training while
  the others restore, and the two collectives would wait for each other
  forever: the usual cause is a local workdir on each host of a pod."""
  if jax.process_count() == 1:
    return
  coordination.publish(f'vit_jax/checkpoint_steps/{jax.process_index()}',
                       json.dumps(steps))
  seen = [json.loads(coordination.wait_for(f'vit_jax/checkpoint_steps/{process}'))
          for process in range(jax.process_count())]
  if any(other != steps for other in seen):
    views = ', '.join(f'process {p} step {v[-1]}' if v else f'process {p} none'
                      for p, v in enumerate(seen))
    raise WorkdirNotSharedError(
        f'the processes see different checkpoints in {directory} (newest: '
        f'{views}); pass a workdir that every host reads and writes as one '
        f'directory (gs:// or a shared filesystem), not a local one per host.')


class CheckpointUnreadableError(UserError):
  """Some processes read a checkpoint that others cannot."""


def agree_damaged(step: int, reason: str, directory) -> None:
  """Returns once every process has failed to restore `step`. Raises
  CheckpointUnreadableError when one did not fail within the peer wait (it
  read the checkpoint and waits for this one in a collective of the
  restore), and leaves a verdict for the others: when this process leaves,
  their restore breaks too, and that must not count as damage."""
  if jax.process_count() == 1:
    return
  key = f'vit_jax/restore_failed/{step}'
  verdict_key = f'vit_jax/restore_unreadable/{step}'
  me = jax.process_index()
  coordination.publish(f'{key}/{me}', reason)
  for process in range(jax.process_count()):
    try:
      coordination.wait_for(f'{key}/{process}')
    except Exception:  # pylint: disable=broad-except
      message = (
          f'process {me} cannot read the checkpoint at step {step} in '
          f'{directory} ({reason}), but process {process} did not fail on it: '
          f'the checkpoint is left as it is (not set aside). Check that this '
          f'host can read the workdir, then rerun.')
      try:
        coordination.publish(verdict_key, message)
      except Exception:  # pylint: disable=broad-except
        pass  # another process gave the verdict first
      raise CheckpointUnreadableError(message) from None
  verdict = coordination.read_now(verdict_key)
  if verdict is not None:
    raise CheckpointUnreadableError(verdict)
  # No verdict: every process failed to read it.


class CheckpointConfigError(UserError):
  """The workdir's checkpoint does not fit the model of the config."""


def _param_shapes(state: Any) -> dict[str, tuple]:
  """'params/...' leaf path -> shape, for any tree of arrays or metadata."""
  shapes = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    key = '/'.join(str(getattr(p, 'key', getattr(p, 'name', getattr(p, 'idx', p))))
                   for p in path)
    if key.startswith('params/') and hasattr(leaf, 'shape'):
      shapes[key] = tuple(leaf.shape)
  return shapes


def abstract_with_shardings(shapes: Any, shardings: Any) -> Any:
  return jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      shapes, shardings)
