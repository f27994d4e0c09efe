"""Checksums of a committed checkpoint, so that damage is found on restore.

orbax notices a checkpoint cut short (missing or truncated files) but not
one whose bytes changed afterwards (a flipped bit on a disk or in a copy):
that restores without a word and poisons the run. Once a save has
committed, process 0 writes `<step>/checksums.json`, the CRC-32 and size of
every file of the step, beside orbax's own files (orbax ignores it and
deletes it with the step). A restore first reads every file back against
it; a difference is damage, handled like a truncated file. A step without
the file (written before it existed, or killed before it was written) is
restored unchecked. Verifying reads the checkpoint once more.
"""

import json
import zlib

from etils import epath

from vit_jax.runtime.paths import write_atomically

MANIFEST = 'checksums.json'
_CHUNK = 16 << 20


class ChecksumMismatchError(ValueError):
  """A file of a checkpoint is not what was written."""


def _crc32(path: epath.Path) -> tuple[int, int]:
  crc, size = 0, 0
  with path.open('rb') as f:
    while chunk := f.read(_CHUNK):
      crc = zlib.crc32(chunk, crc)
      size += len(chunk)
  return crc, size


def _files(folder: epath.Path) -> list[epath.Path]:
  """Every file under `folder` (epath has no recursive glob on buckets)."""
  files = []
  for path in sorted(folder.iterdir()):
    if path.is_dir():
      files += _files(path)
    elif path.name != MANIFEST:
      files.append(path)
  return files


def write_manifest(step_dir) -> None:
  """checksums.json for the committed step folder `step_dir`."""
  step_dir = epath.Path(step_dir)
  files = {}
  for path in _files(step_dir):
    crc, size = _crc32(path)
    files[str(path.relative_to(step_dir))] = {'crc32': crc, 'bytes': size}
  write_atomically(str(step_dir / MANIFEST), json.dumps(
      {'files': files}, indent=0, sort_keys=True))


def verify_manifest(step_dir) -> bool:
  """Raises ChecksumMismatchError naming the first file that differs from
  the manifest (or is missing); False when the step has no manifest."""
  step_dir = epath.Path(step_dir)
  manifest = step_dir / MANIFEST
  if not manifest.exists():
    return False
  files = json.loads(manifest.read_text())['files']
  for name, expected in sorted(files.items()):
    path = step_dir / name
    if not path.exists():
      raise ChecksumMismatchError(f'{name} is missing (listed in {MANIFEST})')
    crc, size = _crc32(path)
    if (crc, size) != (expected['crc32'], expected['bytes']):
      raise ChecksumMismatchError(
          f'{name} does not match its checksum ({size} bytes, CRC-32 '
          f'{crc:08x}; written: {expected["bytes"]} bytes, '
          f'{expected["crc32"]:08x})')
  return True
