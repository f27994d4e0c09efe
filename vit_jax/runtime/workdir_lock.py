"""One live run per workdir.

Two jobs on one workdir (a relaunch while the old job still runs) would
delete each other's checkpoints and interleave their metrics. Process 0
holds `workdir/lock.json` while the run lives and renews it every
RENEW_SECONDS. A second run refuses to start while the holder lives: on
the same host, while its process exists; from another host, while the
lease was renewed within LEASE_SECONDS. A lock whose holder is dead is
taken over with one line saying so.
"""

import contextlib
import json
import os
import socket
import threading
import time
import uuid

from etils import epath

from vit_jax.runtime.user_errors import UserError

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
    try:
      holder = json.loads(path.read_text())
    except (ValueError, OSError):
      holder = {}
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
  stop = threading.Event()

  def renew():
    while not stop.wait(RENEW_SECONDS):
      try:
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
