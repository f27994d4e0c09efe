"""Messages between the processes of one job, through JAX's coordination
service (a key-value store held by process 0).

JAX has no public API for the store, so this module is the only user of
its private client; a JAX upgrade that moves it touches this file alone.
"""

import re

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


def peer_gone_message(cause: str) -> str:
  return (f'process {jax.process_index()}: another process of this job is '
          f'gone ({cause}); this one cannot go on without it. Rerun every '
          f'process to resume from the last complete checkpoint.')
