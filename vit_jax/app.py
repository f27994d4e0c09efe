"""The front door of every entry point.

`app.run(main)` defines nothing new per entry point: the shared flags live
here once (`--config`, `--workdir`, the multi-process flags), and before
`main` runs, in this order: logging is set up, a host without a TPU is kept
off libtpu, `jax.distributed` is initialized (before anything starts a JAX
backend), and one host's failure is made to end every host. `main`'s
outcome becomes the exit status:

- a user error (`user_errors.UserError`): one line `error: ...` on stderr,
  exit 2, no traceback;
- a stop at a checkpoint (SIGTERM, or the first Ctrl-C): exit 75, rerun to
  resume; a second Ctrl-C aborts at once (exit 130);
- anything else keeps its traceback (exit 1); with several processes the
  others are told and exit within seconds instead of waiting in a
  collective.
"""

import logging as std_logging
import os
import sys
import threading
import time
import traceback
from typing import Callable, Sequence

from absl import app as absl_app
from absl import flags, logging
import jax
from ml_collections import config_flags

from vit_jax.runtime import platform
from vit_jax.runtime.preemption import (EXIT_INTERRUPTED, EXIT_PREEMPTED,
                                        InterruptedAtOnce, Preempted,
                                        StoppedOutsideTraining, stop_on_sigterm)
from vit_jax.config import describe
from vit_jax.config import files as config_files
from vit_jax.runtime import coordination
from vit_jax.runtime import coordinator_probe
from vit_jax.runtime.user_errors import EXIT_USER_ERROR, UserError

CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally with an argument string: '
    'configs/pretrain.py:model=B/16,dataset=imagenet2012.', lock_config=True)
WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory (local or gs://) for checkpoints and logs.')
DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'auto', ['auto', 'on', 'off'],
    'Call jax.distributed.initialize: auto = when a cluster is detected or a '
    'coordinator address is given.')
COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                  'host:port of process 0 (multi-host only).')
NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Process count.')
PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index.')
HEARTBEAT = flags.DEFINE_integer(
    'heartbeat_timeout', 60, 'Seconds without a heartbeat after which a '
    'process counts as dead and every other process stops (non-zero exit) '
    'instead of waiting in a collective.')
CONNECT_TIMEOUT = flags.DEFINE_integer(
    'initialization_timeout', 300, 'Seconds a process waits for all others '
    'to reach the coordinator at start-up.')

# Environment variables that mean "this is one process of a cluster" for
# jax.distributed's own auto-detection.
_CLUSTER_ENV = ('SLURM_JOB_ID', 'TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS',
                'OMPI_COMM_WORLD_SIZE', 'JAX_COORDINATOR_ADDRESS')
# The coordination-service key under which a failing process leaves its
# message for the others.
_FAILURE_KEY = 'vit_jax/failure'
_FAILURE_POLL_SECONDS = 0.5


def is_main_process() -> bool:
  return jax.process_index() == 0


def console(message: str) -> None:
  """Progress for the person at the terminal: process 0 only."""
  if is_main_process():
    print(message, flush=True)


def initialize_distributed() -> None:
  """`jax.distributed.initialize` when this is one process of several:
  with --coordinator_address given, or on a detected cluster (TPU VM pod,
  SLURM, Open MPI), or with --distributed=on."""
  explicit = COORDINATOR.value is not None
  wanted = DISTRIBUTED.value == 'on' or (
      DISTRIBUTED.value == 'auto' and
      (explicit or any(os.environ.get(k) for k in _CLUSTER_ENV)))
  if not wanted:
    return
  kwargs = dict(heartbeat_timeout_seconds=HEARTBEAT.value,
                initialization_timeout=CONNECT_TIMEOUT.value)
  if explicit:
    kwargs.update(coordinator_address=COORDINATOR.value,
                  num_processes=NUM_PROCESSES.value,
                  process_id=PROCESS_ID.value)
    if PROCESS_ID.value == 0:
      coordinator_probe.check_port_free(COORDINATOR.value)
  # CPU-only clusters (tests, debugging) need a cross-process collective
  # backend; accelerators ignore this setting.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  watchdog = None
  if explicit and PROCESS_ID.value != 0:
    coordinator_probe.wait_for_coordinator(
        COORDINATOR.value, CONNECT_TIMEOUT.value, PROCESS_ID.value)
    watchdog = coordinator_probe.CoordinatorWatchdog(
        COORDINATOR.value, PROCESS_ID.value).start()
  try:
    coordination.start(**kwargs)
  except Exception as e:  # pylint: disable=broad-except
    if not explicit:
      raise
    raise UserError(
        f'could not start the {NUM_PROCESSES.value} processes through the '
        f'coordinator at {COORDINATOR.value} within {CONNECT_TIMEOUT.value} s '
        f'({type(e).__name__}: {str(e).splitlines()[0][:200]}); start every '
        f'process with the same --coordinator_address and --num_processes '
        f'and a distinct --process_id, with process 0 on that host.') from None
  finally:
    if watchdog is not None:
      watchdog.stop()
  if jax.process_count() > 1:
    _watch_for_failures()


def _watch_for_failures() -> None:
  """Daemon threads that end this process as soon as another one reports
  a failure (heartbeats only catch processes that died), or has shown no
  sign of life for half the heartbeat timeout (hung or stopped: JAX would
  abort this process with a C++ stack once the whole timeout is over)."""

  own = f'process {jax.process_index()} failed: '
  liveness = coordination.PeerLiveness(hang_seconds=HEARTBEAT.value / 2)
  beat_every = coordination.beat_seconds()

  def watch():
    last_beat = 0.0
    while not _WATCHING_STOPPED.wait(_FAILURE_POLL_SECONDS):
      message = _reported_failure()
      if message is not None and not message.startswith(own):
        print(f'error: stopping: {message}', file=sys.stderr, flush=True)
        os._exit(1)  # pylint: disable=protected-access
      # (None, or this process's own: it is exiting with its code.)
      if time.monotonic() - last_beat >= beat_every:
        last_beat = time.monotonic()
        try:
          liveness.beat()
        except Exception:  # pylint: disable=broad-except
          pass  # the service did not answer: `judge` counts the silence

  def judge():
    # No call to the service here: it must work when the service hangs.
    while not _WATCHING_STOPPED.wait(1.0):
      verdict = liveness.verdict()
      if verdict:
        print(f'error: process {jax.process_index()}: {verdict}; stopping '
              f'(rerun every process to resume from the last complete '
              f'checkpoint).', file=sys.stderr, flush=True)
        os._exit(EXIT_USER_ERROR)  # pylint: disable=protected-access

  _WATCHERS[:] = [threading.Thread(target=watch, daemon=True, name='failure-watch'),
                  threading.Thread(target=judge, daemon=True, name='hang-judge')]
  for thread in _WATCHERS:
    thread.start()


# Set once this process's part is done: the watchers finish their calls to
# the coordination service before JAX shuts it down (a call to a service
# that is gone aborts the process inside JAX's client).
_WATCHING_STOPPED = threading.Event()
_WATCHERS: list[threading.Thread] = []


def _stop_watching() -> None:
  _WATCHING_STOPPED.set()
  for thread in _WATCHERS:
    thread.join(timeout=10)


def _reported_failure() -> str | None:
  return coordination.read_now(_FAILURE_KEY)


def _report_failure(message: str) -> None:
  """Tells the other processes. The coordination service lives in process
  0: from there, the others get time to read the message before it goes;
  any other process leaves at once (once process 0 has read the message
  and exited, the service is gone and JAX would abort this one)."""
  try:
    coordination.publish(
        _FAILURE_KEY, f'process {jax.process_index()} failed: {message}')
  except Exception:  # pylint: disable=broad-except
    return  # another process reported first, or the service is gone
  if jax.process_index() == 0:
    time.sleep(4 * _FAILURE_POLL_SECONDS)


def _exit(code: int) -> None:
  """With several processes, skip the interpreter's exit (jax.distributed's
  shutdown barrier would wait for processes that are not coming)."""
  sys.stdout.flush()
  sys.stderr.flush()
  if code and coordination.multiprocess():
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


def _flag_error(e: BaseException) -> str:
  # ml_collections wraps a KeyError (the key's repr, then a suggestion) in
  # an AttributeError.
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if isinstance(e, KeyError) and lines:
    lines[0] = f'config key {lines[0]} does not exist'
  return '; '.join(lines) or type(e).__name__


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, where a bad flag (a required one missing, a
  config override of a key that does not exist or of the wrong type) is a
  user error: one line, exit 2, before anything runs."""
  config_flag = _config_flag(argv)
  problem = config_files.file_problem(config_flag) if config_flag else None
  if problem:
    print(f'error: {problem}', file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    if config_flag and config_files.raised_by(config_flag, e):
      text = config_files.load_problem(config_flag, e)
    elif isinstance(e, (flags.Error, KeyError, AttributeError, TypeError,
                        ValueError)):
      text = f'{_flag_error(e)}; see --help for the flags'
    else:
      raise
    print(f'error: {text}', file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def _config_flag(argv: list[str]) -> str | None:
  """The --config value in `argv`, if any."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


_HELP_FLAGS = ('--help', '-h', '--helpshort', '-?')


def _help(argv: list[str], required: Sequence[str]) -> str:
  """The entry point's docstring, its flags (shared ones first) with their
  defaults, and, with --config given, every config key with its value and
  description, as overrides to paste."""
  _parse_flags([arg for arg in argv if arg not in _HELP_FLAGS])
  main = sys.modules.get('__main__')
  lines = [(main.__doc__ or '').strip(), '', 'flags:']
  ours = [name for name in flags.FLAGS.flags_by_module_dict()
          if name.startswith('vit_jax') or name in ('__main__', argv[0])]
  for module in sorted(ours, key=lambda name: name != __name__):
    for flag in flags.FLAGS.flags_by_module_dict()[module]:
      default = '' if flag.name == 'config' else f' (default: {flag.default})'
      need = ' [required]' if flag.name in required else ''
      lines.append(f'  --{flag.name}: {flag.help}{need}{default}')
  if CONFIG.value is not None:
    path = flags.FLAGS['config'].config_filename
    lines += ['', f'config {flags.FLAGS["config"].serialize().split("=", 1)[1]} '
              '(each key can be overridden with --config.KEY=VALUE):']
    lines += describe.describe(CONFIG.value, path)
  else:
    lines += ['', 'With --config FILE, --help lists the config\'s keys and values.']
  return '\n'.join(lines)


def run(main: Callable[[], None], *, required: Sequence[str] = ('config',),
        distributed: bool = True) -> None:
  """Parses flags and runs `main()` with the start-up and exits above."""
  if any(arg in _HELP_FLAGS for arg in sys.argv[1:]):
    print(_help(sys.argv, required))
    sys.exit(0)

  def start(argv):
    if len(argv) > 1:
      raise absl_app.UsageError(f'unexpected arguments {argv[1:]}')
    # Orbax logs every save step at INFO; progress is printed by `console`.
    logging.set_verbosity(logging.WARNING)
    try:
      stop_on_sigterm()
      platform.skip_absent_tpu()
      if distributed:
        initialize_distributed()
      main()
      if coordination.multiprocess():
        coordination.PeerLiveness.mark_done()
        _stop_watching()
    except UserError as e:
      # A failed checkpoint save leaves orbax's asyncio futures holding the
      # same error; at exit asyncio would log each one with a traceback
      # after this line.
      std_logging.getLogger('asyncio').disabled = True
      print(f'error: {e}', file=sys.stderr, flush=True)
      if coordination.multiprocess():
        _report_failure(str(e))
      _exit(EXIT_USER_ERROR)
    except (Preempted, StoppedOutsideTraining) as e:
      console(str(e))
      _exit(EXIT_PREEMPTED)
    except KeyboardInterrupt as e:
      print(str(e) if isinstance(e, InterruptedAtOnce) else
            'interrupted: stopped without saving', file=sys.stderr, flush=True)
      sys.stdout.flush()
      # Not the interpreter's exit: it would join orbax's background save.
      os._exit(EXIT_INTERRUPTED)  # pylint: disable=protected-access
    except Exception as e:  # pylint: disable=broad-except
      reported = _reported_failure() if coordination.multiprocess() else None
      if reported:
        # A collective broke because another process failed first: its
        # message is the cause, this traceback only the consequence.
        print(f'error: stopping: {reported}', file=sys.stderr, flush=True)
        _exit(1)
      gone = (coordination.peer_gone_cause(e)
              if jax.process_count() > 1 else None)
      if gone:
        silent = coordination.silent_processes()
        print(f'error: {coordination.peer_gone_message(gone, silent)}',
              file=sys.stderr, flush=True)
        _exit(EXIT_USER_ERROR)
      traceback.print_exc()
      if coordination.multiprocess():
        _report_failure(f'{type(e).__name__}: {str(e).splitlines()[0][:300]}'
                        if str(e) else type(e).__name__)
      _exit(1)

  flags.mark_flags_as_required(list(required))
  absl_app.run(start, flags_parser=_parse_flags)
