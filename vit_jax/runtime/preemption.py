"""Stopping cleanly when the machine is taken away or the user presses Ctrl-C.

TPU VMs and SLURM send SIGTERM before a preemption; a person at the
terminal presses Ctrl-C (SIGINT). The train loop asks `should_stop(step)`
after every step; when it says yes, every process is at the same step, the
loop saves a checkpoint there and raises Preempted, and the entry point
exits with EXIT_PREEMPTED. Rerunning the command resumes. A second Ctrl-C
does not wait for the checkpoint: it raises KeyboardInterrupt at once.

One process: the signal handlers set a flag. Several processes: JAX's
coordination service records a SIGTERM and `reached_preemption_sync_point`
makes all processes agree on the step; a Ctrl-C is turned into a SIGTERM to
this process, so it takes the same agreed path.
"""

import os
import signal
import sys
import threading

import jax
from jax.experimental import multihost_utils

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a temporary failure; run again
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


class Preempted(Exception):
  """Training stopped at a checkpoint because the process was asked to."""

  def __init__(self, step: int):
    super().__init__(f'preempted: saved a checkpoint at step {step}; rerun the '
                     f'same command to resume.')
    self.step = step


class StoppedOutsideTraining(BaseException):
  """A SIGTERM before the train loop watches for one (start-up: reading
  the data, restoring, compiling) or after it (the export). A
  BaseException, like KeyboardInterrupt: code that catches Exception (e.g.
  TensorFlow's AutoGraph, which falls back when a conversion fails) must not
  swallow it."""

  def __init__(self):
    super().__init__('stopped by SIGTERM before or after the train loop, '
                     'where no step can be lost; rerun the same command to '
                     'continue.')


def stop_on_sigterm() -> None:
  """Until a PreemptionWatcher takes over (and after it hands back), a
  SIGTERM raises StoppedOutsideTraining in the main thread, so the entry
  point can say so in one line and exit with EXIT_PREEMPTED."""
  def stop(signum, frame):
    del signum, frame
    raise StoppedOutsideTraining()
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, stop)


class InterruptedAtOnce(KeyboardInterrupt):
  """A second Ctrl-C: the run stops without saving and without waiting
  for a checkpoint still being written (which is then left incomplete and
  ignored by the rerun, as after a kill)."""

  def __init__(self, step_being_saved: int | None):
    if step_being_saved is None:
      text = ('interrupted: stopped at once without saving; rerun the same '
              'command to resume from the last checkpoint.')
    else:
      text = (f'interrupted: stopped at once, without waiting for the '
              f'checkpoint of step {step_being_saved} being written; rerun '
              f'the same command to resume from the last complete one.')
    super().__init__(text)


class PreemptionWatcher:
  """`install()`, then `should_stop(step)` is True once a stop was asked;
  `uninstall()` puts the previous handlers back. `reason` names the signal."""

  def __init__(self):
    self.reason = None
    self._previous = {}
    self._multihost = jax.process_count() > 1

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self.reason = self.reason or 'SIGTERM'

  def _on_sigint(self, signum, frame):
    del signum, frame
    if self.reason == 'Ctrl-C':
      raise KeyboardInterrupt
    self.reason = 'Ctrl-C'
    print('Ctrl-C: stopping at the next step with a checkpoint; press Ctrl-C '
          'again to stop at once without one.', file=sys.stderr, flush=True)
    if self._multihost:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier agrees the step

  def install(self) -> 'PreemptionWatcher':
    # Signal handlers can only be installed from the main thread; elsewhere
    # (e.g. a notebook worker thread) stops are not watched.
    if threading.current_thread() is not threading.main_thread():
      return self
    self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
    if not self._multihost:  # else JAX's preemption notifier owns SIGTERM
      self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM,
                                                     self._on_sigterm)
    return self

  def uninstall(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def should_stop(self, step: int) -> bool:
    if self._multihost:
      if multihost_utils.reached_preemption_sync_point(step):
        self.reason = self.reason or 'SIGTERM'
        return True
      return False
    return self.reason is not None
