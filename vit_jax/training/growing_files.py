"""Files a run keeps adding to (metrics.jsonl, TensorBoard events), local or
in a bucket, through etils.epath like every other file of a run.

A local file is appended to. An object store (gs://) cannot append to an
object, so the object is rewritten with everything so far: at most every
`REMOTE_FLUSH_SECONDS` and at close. What a killed run had not flushed
belongs to steps after its last checkpoint, which the rerun repeats and
logs again.
"""

import time

from etils import epath

from vit_jax.runtime.paths import is_remote

REMOTE_FLUSH_SECONDS = 30.0


class GrowingFile:
  """`append(bytes)`, `flush()`, `close()`; keeps what the file held."""

  def __init__(self, path, *, flush_seconds: float = REMOTE_FLUSH_SECONDS):
    self.path = epath.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._remote = is_remote(path)
    self._flush_seconds = flush_seconds
    if self._remote:
      self._content = bytearray(self.path.read_bytes() if self.path.exists() else b'')
      self._dirty = False
      self._flushed_at = time.monotonic()
    else:
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
