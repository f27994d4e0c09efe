"""One live run per workdir.

Two jobs on one workdir (a relaunch while the old job still runs) would
delete each other's checkpoints and interleave their metrics. Process 0
holds `workdir/lock.json` while the run lives and renews it every
RENEW_SECONDS. A second run refuses to start while the holder lives: on
the same host, while its process exists; from another host, while the
lease was renewed within LEASE_SECONDS. A lock whose holder is dead is
taken over with one line saying so.

The lock is a lease with a token: each renewal first reads the file, and a
run that finds another run's token there (its lock was deleted and taken)
stops at once with one line, without saving, so that only one run ever
writes the workdir; a lock file that is gone is written again by its
holder. A run that takes the lock reads it back, so of two runs starting
together only one goes on.
"""

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid

from etils import epath

from vit_jax.runtime.user_errors import EXIT_USER_ERROR, UserError

LOCK_FILE = 'lock.json'
RENEW_SECONDS = 15.0
LEASE_SECONDS = 60.0


class WorkdirBusyError(UserError):
  """Another live run holds the workdir."""


def _process_exists(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # exists, owned by another user
  return True


def _read(path) -> dict:
  try:
    return json.loads(path.read_text())
  except (ValueError, OSError):
    return {}


def holder_alive(holder: dict, now: float) -> bool:
  if holder.get('host') == socket.gethostname():
    return _process_exists(int(holder.get('pid', -1)))
  return now - float(holder.get('renewed', 0)) < LEASE_SECONDS


@contextlib.contextmanager
def held(workdir: str, log=print):
  """Holds the workdir's lock around the block (call on process 0 only)."""
  path = epath.Path(workdir) / LOCK_FILE
  now = time.time()
  if path.exists():
    holder = _read(path)
    if holder_alive(holder, now):
      raise WorkdirBusyError(
          f'workdir {workdir} is in use by another run (process '
          f'{holder.get("pid")} on host {holder.get("host")}, lock renewed '
          f'{now - float(holder.get("renewed", now)):.0f} s ago); stop that '
          f'run first or pass another --workdir (a lock from another host '
          f'expires {LEASE_SECONDS:.0f} s after its run dies; delete '
          f'{path} if you are sure it is dead).')
    if holder:
      log(f'taking over the lock of a run that is no longer alive (process '
          f'{holder.get("pid")} on host {holder.get("host")})')
  mine = dict(host=socket.gethostname(), pid=os.getpid(), token=uuid.uuid4().hex,
              started=now, renewed=now)
  path.write_text(json.dumps(mine))
  holder = _read(path)
  if holder.get('token') != mine['token']:
    raise WorkdirBusyError(
        f'workdir {workdir} was taken by another run starting at the same '
        f'time (process {holder.get("pid")} on host {holder.get("host")}); '
        f'pass another --workdir.')
  stop = threading.Event()

  def renew():
    while not stop.wait(RENEW_SECONDS):
      try:
        holder = _read(path) if path.exists() else mine
        if holder.get('token') != mine['token'] and not stop.is_set():
          # Another run writes this workdir now: write nothing more.
          print(f'error: the lock of workdir {workdir} was taken by another '
                f'run (process {holder.get("pid")} on host '
                f'{holder.get("host")}) after {path} was deleted; this run '
                f'stops without saving so as not to overwrite that run\'s '
                f'checkpoints. Rerun once that run is done, or use another '
                f'--workdir.', file=sys.stderr, flush=True)
          os._exit(EXIT_USER_ERROR)  # pylint: disable=protected-access
        path.write_text(json.dumps({**mine, 'renewed': time.time()}))
      except Exception:  # pylint: disable=broad-except
        pass  # a missed renewal only shortens the lease; try again later
  thread = threading.Thread(target=renew, daemon=True, name='workdir-lock')
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()
    try:
      if json.loads(path.read_text()).get('token') == mine['token']:
        path.unlink()
    except Exception:  # pylint: disable=broad-except
      pass
