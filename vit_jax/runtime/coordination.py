"""Messages between the processes of one job, through JAX's coordination
service (a key-value store held by process 0).

JAX has no public API for the store, so this module is the only user of
its private client; a JAX upgrade that moves it touches this file alone.
"""

import re
import threading
import time

import jax
from jax._src import distributed as _jax_distributed

# How long a process waits for the others' answers, by default; `start`
# sets it to the job's heartbeat timeout, after which a silent peer counts
# as gone anyway.
_peer_wait = {'seconds': 60.0}


def start(*, heartbeat_timeout_seconds: int, **initialize_kwargs) -> None:
  """`jax.distributed.initialize`, remembering the heartbeat timeout as
  the longest wait for another process."""
  jax.distributed.initialize(
      heartbeat_timeout_seconds=heartbeat_timeout_seconds, **initialize_kwargs)
  _peer_wait['seconds'] = float(heartbeat_timeout_seconds)


def peer_wait_seconds() -> float:
  return _peer_wait['seconds']


def _client():
  return _jax_distributed.global_state.client


def multiprocess() -> bool:
  """Whether this is one process of several with a coordination service."""
  return _client() is not None and jax.process_count() > 1


def publish(key: str, value: str) -> None:
  """Sets `key` once; raises if it is set already or the service is gone."""
  _client().key_value_set(key, value)


def read_now(key: str) -> str | None:
  """The value of `key`, or None when it is unset or the service is gone."""
  try:
    return _client().key_value_try_get(key)
  except Exception:  # pylint: disable=broad-except
    return None


def wait_for(key: str, seconds: float | None = None) -> str:
  """The value of `key` once some process sets it; raises after `seconds`
  (default: `peer_wait_seconds()`)."""
  seconds = peer_wait_seconds() if seconds is None else seconds
  return _client().blocking_key_value_get(key, int(seconds * 1000))


# What a collective or the coordination service says when another process
# of the job is gone (killed, crashed, its host lost): Gloo's TCP pairs on
# CPU, gRPC statuses of the service, NCCL on GPUs.
_PEER_GONE = re.compile(
    r'(Connection reset by peer|Connection closed by peer|Broken pipe|'
    r'Socket closed|failed to connect to all addresses|heartbeat|'
    r'NCCL (?:error|WARN).*(?:remote|peer)|UNAVAILABLE:[^\n]*'
    r'(?:coordination|connect|Socket))', re.IGNORECASE)
_COLLECTIVE = re.compile(r'(Gloo [\w-]+ failed|NCCL [\w-]+ failed|'
                         r'coordination service)', re.IGNORECASE)


def peer_gone_cause(error: BaseException) -> str | None:
  """When `error` (or an error it was raised from) says that another
  process of the job went away, a short description of what broke
  ('Gloo all-reduce failed: Connection reset by peer'); else None."""
  seen, queue = set(), [error]
  while queue:
    e = queue.pop(0)
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    text = str(e)
    gone = _PEER_GONE.search(text)
    if gone:
      collective = _COLLECTIVE.search(text)
      return (f'{collective.group(1)}: {gone.group(1)}' if collective
              else gone.group(1))
    queue += [e.__cause__, e.__context__, *getattr(e, 'exceptions', ())]
  return None


def beat_seconds() -> float:
  """How often each process shows a sign of life (PeerLiveness.beat)."""
  return min(2.0, peer_wait_seconds() / 10)


def silent_processes() -> list[int] | None:
  """The other processes whose sign-of-life count does not move for three
  beats: the ones that are gone. None when the coordination service does
  not answer within that time: process 0, which holds it, is gone."""
  wait = 3 * beat_seconds()
  found = {}

  def look():
    client = _client()
    first = dict(client.key_value_dir_get(PeerLiveness.PREFIX))
    time.sleep(wait)
    second = dict(client.key_value_dir_get(PeerLiveness.PREFIX))
    done = {key.rsplit('/', 1)[-1]
            for key, _ in client.key_value_dir_get(PeerLiveness.DONE)}
    found['silent'] = sorted(
        int(key.rsplit('/', 1)[-1]) for key, count in second.items()
        if first.get(key) == count and key.rsplit('/', 1)[-1] not in done
        and int(key.rsplit('/', 1)[-1]) != jax.process_index())
  looking = threading.Thread(target=look, daemon=True)
  looking.start()
  looking.join(wait + 5)
  return found.get('silent')


def peer_gone_message(cause: str, silent: list[int] | None = ()) -> str:
  """The line for a process that lost a peer: which one, when
  `silent_processes` could tell."""
  if silent is None:
    who = 'process 0, which holds the coordination service, is gone'
  elif silent:
    who = (f'process {silent[0]} is gone' if len(silent) == 1 else
           f'processes {", ".join(map(str, silent))} are gone')
  else:
    who = 'another process of this job is gone'
  return (f'process {jax.process_index()}: {who} ({cause}); this one cannot go '
          f'on without it. Rerun every process to resume from the last '
          f'complete checkpoint.')


class PeerLiveness:
  """Signs of life of every process through the coordination service, so
  that a process that hangs (stopped, swapped out, its host frozen) is
  named before JAX's own heartbeat check aborts the others with a C++
  stack. `beat()` (a thread calls it every few seconds) counts this
  process's life up and reads everyone's counts; `verdict()` (local, no
  call to the service) says who has shown none for `hang_seconds`, or that
  the service itself (process 0) stopped answering."""

  PREFIX = 'vit_jax/alive/'
  # A process that finished its part (e.g. while process 0 still exports)
  # is not hung.
  DONE = 'vit_jax/done/'

  def __init__(self, hang_seconds: float):
    self.hang_seconds = hang_seconds
    self.started = self.last_answer = time.monotonic()
    self._seen: dict[int, tuple[str, float]] = {}
    self._done: set[int] = set()

  def beat(self) -> None:
    client = _client()
    client.key_value_increment(f'{self.PREFIX}{jax.process_index()}', 1)
    counts = client.key_value_dir_get(self.PREFIX)
    done = client.key_value_dir_get(self.DONE)
    now = time.monotonic()
    self.last_answer = now
    for key, count in counts:
      process = int(key.rsplit('/', 1)[-1])
      if self._seen.get(process, (None,))[0] != count:
        self._seen[process] = (count, now)
    self._done |= {int(key.rsplit('/', 1)[-1]) for key, _ in done}

  @classmethod
  def mark_done(cls) -> None:
    """This process has finished its part of the job."""
    try:
      publish(f'{cls.DONE}{jax.process_index()}', 'done')
    except Exception:  # pylint: disable=broad-except
      pass  # the service is gone: nobody is left to mind

  def verdict(self) -> str | None:
    now = time.monotonic()
    silent = now - self.last_answer
    if silent > self.hang_seconds:
      return (f'the coordination service in process 0 has not answered for '
              f'{silent:.0f} s: process 0 is hung or stopped, or its host is '
              f'unreachable')
    for process in range(jax.process_count()):
      if process == jax.process_index() or process in self._done:
        continue
      changed = self._seen.get(process, (None, self.started))[1]
      if now - changed > self.hang_seconds:
        return (f'process {process} has shown no sign of life for '
                f'{now - changed:.0f} s: it is hung or stopped, or its host '
                f'is unreachable')
    return None
