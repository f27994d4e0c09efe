"""Reaching process 0's coordinator at start-up, before and while
`jax.distributed.initialize` waits: a port taken on process 0's host, a
coordinator that never comes up, or one that dies while the processes
start each end with one line instead of JAX's C++ abort after the whole
`--initialization_timeout`."""

import errno
import os
import socket
import sys
import threading
import time

from vit_jax.runtime.user_errors import EXIT_USER_ERROR, UserError


def host_port(address: str) -> tuple[str, int]:
  host, _, port = address.rpartition(':')
  try:
    return host.strip('[]'), int(port)
  except ValueError:
    raise UserError(f'--coordinator_address={address!r}: expected HOST:PORT, '
                    f'e.g. 10.0.0.2:1234.') from None


def answers(address: str) -> bool:
  """Whether something accepts connections at `address` now."""
  try:
    with socket.create_connection(host_port(address), timeout=2):
      return True
  except OSError:
    return False


def wait_for_coordinator(address: str, timeout: float, process_id: int) -> None:
  """Returns once process 0's coordinator accepts connections; a
  UserError after `timeout` s. (Left to JAX, a coordinator that never comes
  up ends this process with a C++ abort after the same wait.)"""
  deadline = time.monotonic() + timeout
  while not answers(address):
    if time.monotonic() > deadline:
      raise UserError(
          f'process {process_id}: the coordinator at {address} (process 0) '
          f'did not answer within {timeout} s (--initialization_timeout); '
          f'start process 0 there, or fix --coordinator_address.')
    time.sleep(0.5)


class CoordinatorWatchdog:
  """While jax.distributed.initialize waits for the other processes: if
  the coordinator stops accepting connections (process 0 died during
  start-up), say so in one line and exit, before JAX's client aborts the
  process with a C++ stack once its own timeout runs out."""

  CHECKS_BEFORE_GIVING_UP = 3

  def __init__(self, address: str, process_id: int):
    self.address = address
    self.process_id = process_id
    self._stopped = threading.Event()

  def start(self) -> 'CoordinatorWatchdog':
    threading.Thread(target=self._watch, daemon=True).start()
    return self

  def stop(self) -> None:
    self._stopped.set()

  def _watch(self) -> None:
    misses = 0
    while not self._stopped.wait(1.0):
      misses = 0 if answers(self.address) else misses + 1
      if misses >= self.CHECKS_BEFORE_GIVING_UP and not self._stopped.is_set():
        print(f'error: process {self.process_id}: the coordinator at '
              f'{self.address} (process 0) stopped answering while the '
              f'processes were starting; it has died or was stopped. Start '
              f'every process again.', file=sys.stderr, flush=True)
        os._exit(EXIT_USER_ERROR)  # pylint: disable=protected-access


def check_port_free(address: str) -> None:
  """A coordinator port taken by another program otherwise crashes process
  0 inside the coordination service, with no word about the port."""
  port = host_port(address)[1]
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
    try:
      probe.bind(('', port))
    except OSError as e:
      if e.errno != errno.EADDRINUSE:
        raise
      raise UserError(
          f'coordinator port {port} (--coordinator_address={address}) is '
          f'already in use on this host, by another run or another program; '
          f'stop it or pass a free port to every process.') from None
