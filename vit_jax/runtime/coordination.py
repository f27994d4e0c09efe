"""Messages between the processes of one job, through JAX's coordination
service (a key-value store held by process 0).

JAX has no public API for the store, so this module is the only user of
its private client; a JAX upgrade that moves it touches this file alone.
"""

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
