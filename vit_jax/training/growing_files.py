"""Files a run keeps adding to (metrics.jsonl, TensorBoard events), local or
in a bucket, through etils.epath like every other file of a run.

A local file is appended to. An object store (gs://) cannot append to an
object, so the object is rewritten with everything so far: at most every
`REMOTE_FLUSH_SECONDS`, at close, and whenever the train loop commits a
checkpoint (`flush(force=True)` before the save). So what a killed run had
not flushed belongs to steps after its last checkpoint, which the rerun
repeats and logs again: readers keep the last line of a step. A file of
lines whose last line a kill cut short is cut back to its last complete
line when it is opened again.
"""

import logging
import os
import time

from etils import epath

from vit_jax.runtime.paths import is_remote

REMOTE_FLUSH_SECONDS = 30.0


def complete_lines(data: bytes) -> bytes:
  """`data` up to and including its last newline."""
  return data[:data.rfind(b'\n') + 1]


class GrowingFile:
  """`append(bytes)`, `flush()`, `close()`; keeps what the file held (with
  `lines`, up to its last complete line)."""

  def __init__(self, path, *, flush_seconds: float = REMOTE_FLUSH_SECONDS,
               lines: bool = False):
    self.path = epath.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._remote = is_remote(path)
    self._flush_seconds = flush_seconds
    held = self.path.read_bytes() if self.path.exists() else b''
    kept = complete_lines(held) if lines else held
    if len(kept) != len(held):
      logging.warning('%s ended in a line cut short (%d bytes, from a run '
                      'that was killed): removed', self.path, len(held) - len(kept))
    if self._remote:
      self._content = bytearray(kept)
      self._dirty = len(kept) != len(held)
      self._flushed_at = time.monotonic()
    else:
      if len(kept) != len(held):
        os.truncate(os.fspath(self.path), len(kept))
      self._file = self.path.open('ab')

  def __len__(self) -> int:
    return len(self._content) if self._remote else self._file.tell()

  def append(self, data: bytes) -> None:
    if self._remote:
      self._content += data
      self._dirty = True
    else:
      self._file.write(data)

  def flush(self, force: bool = False) -> None:
    if not self._remote:
      self._file.flush()
    elif self._dirty and (
        force or time.monotonic() - self._flushed_at >= self._flush_seconds):
      self.path.write_bytes(bytes(self._content))
      self._dirty = False
      self._flushed_at = time.monotonic()

  def close(self) -> None:
    if self._remote:
      self.flush(force=True)
    else:
      self._file.close()
