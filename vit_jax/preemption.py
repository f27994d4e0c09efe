"""Stopping cleanly when the machine is taken away.

TPU VMs and SLURM send SIGTERM before a preemption. The train loop asks
`should_stop(step)` after every step; when it says yes, every process is at
the same step, the loop saves a checkpoint there and raises Preempted, and
the entry point exits with EXIT_PREEMPTED. Rerunning the command resumes.

One process: a SIGTERM handler sets a flag. Several processes: JAX's
coordination service records the signal and `reached_preemption_sync_point`
makes all processes agree on the step.
"""

import signal
import threading

import jax

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a temporary failure; run again


class Preempted(Exception):
  """Training stopped at a checkpoint because the process was asked to."""

  def __init__(self, step: int):
    super().__init__(f'preempted: saved a checkpoint at step {step}; rerun the '
                     f'same command to resume.')
    self.step = step


class PreemptionWatcher:
  """`install()`, then `should_stop(step)` is True once a stop was asked;
  `uninstall()` puts the previous SIGTERM handler back."""

  def __init__(self):
    self._requested = False
    self._previous = None
    self._multihost = jax.process_count() > 1

  def _handler(self, signum, frame):
    del signum, frame
    self._requested = True

  def install(self) -> 'PreemptionWatcher':
    # Signal handlers can only be installed from the main thread; elsewhere
    # (e.g. a notebook worker thread) preemption is not watched.
    if not self._multihost and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def uninstall(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def should_stop(self, step: int) -> bool:
    if self._multihost:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self._requested
