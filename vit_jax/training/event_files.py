"""TensorBoard event files written without TensorFlow.

An event file is a sequence of TFRecords, each an `Event` protocol buffer;
scalars are `Summary.Value`s with a `simple_value`. Both formats are small
and fixed, so they are encoded here by hand, and the file goes through
`run_files.GrowingFile` like every other file of a run: TensorFlow's own
GCS client is not needed (and cannot be pointed at a storage emulator).
"""

import itertools
import os
import socket
import struct
import time
from typing import Mapping

from vit_jax.training import growing_files as run_files

# A new file once one holds this much, so a bucket object is never rewritten
# with more than this.
MAX_FILE_BYTES = 4 << 20
# Tells apart the writers one process opens within a second.
_WRITER_IDS = itertools.count()


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum of TFRecords."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  length = struct.pack('<Q', len(data))
  return (length + struct.pack('<I', masked_crc32c(length)) + data +
          struct.pack('<I', masked_crc32c(data)))


def _varint(value: int) -> bytes:
  out = bytearray()
  value &= (1 << 64) - 1  # int64 as protobuf encodes negatives
  while True:
    bits, value = value & 0x7F, value >> 7
    out.append(bits | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int = 0, *, file_version: str | None = None,
          scalars: Mapping[str, float] | None = None) -> bytes:
  """An encoded `tensorflow.Event`: wall_time (1, double), step (2, int64),
  file_version (3, string) or summary (5) with one value per scalar: tag
  (1, string) and simple_value (2, float)."""
  out = _varint(1 << 3 | 1) + struct.pack('<d', wall_time)
  out += _varint(2 << 3 | 0) + _varint(step)
  if file_version is not None:
    out += _field_bytes(3, file_version.encode())
  if scalars:
    values = b''.join(
        _field_bytes(1, _field_bytes(1, tag.encode()) +
                     _varint(2 << 3 | 5) + struct.pack('<f', float(value)))
        for tag, value in scalars.items())
    out += _field_bytes(5, values)
  return out


class EventWriter:
  """Scalars to `directory/events.out.tfevents.<time>.<host>.<pid>.<id>`,
  continued in `<that name>.<n>` once a file holds MAX_FILE_BYTES."""

  def __init__(self, directory, *,
               flush_seconds: float = run_files.REMOTE_FLUSH_SECONDS):
    self._directory = str(directory).rstrip('/')
    self._flush_seconds = flush_seconds
    self._name = (f'events.out.tfevents.{int(time.time()):010d}.'
                  f'{socket.gethostname()}.{os.getpid()}.{next(_WRITER_IDS)}')
    self._parts = 0
    self._file = None

  def _open_next(self) -> None:
    if self._file is not None:
      self._file.close()
    suffix = f'.{self._parts}' if self._parts else ''
    self._parts += 1
    self._file = run_files.GrowingFile(
        f'{self._directory}/{self._name}{suffix}',
        flush_seconds=self._flush_seconds)
    self._file.append(tfrecord(event(time.time(), file_version='brain.Event:2')))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._file is None or len(self._file) >= MAX_FILE_BYTES:
      self._open_next()
    self._file.append(tfrecord(event(time.time(), step, scalars=scalars)))
    self._file.flush()

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush(force=True)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
