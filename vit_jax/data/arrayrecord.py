"""`dataset='arrayrecord:DIR'`: ArrayRecord shards written by `python -m
vit_jax.data.convert`, read by global index with Grain, preprocessed with
Pillow and NumPy. Nothing here imports TensorFlow.

DIR holds `metadata.json` (class names, splits with their shards and
counts) and `<split>-NNNNN-of-MMMMM.array_record` shards. A split's
examples are numbered across its shards in order; a slice such as
'train[:90%]' is a range of those numbers. Shards in a bucket (gs://...)
are copied once into a local cache (`config.data_cache_dir`, by default
~/.cache/vit_jax/arrayrecord): ArrayRecord reads local files, and random
access over a network file per example would be slow.
"""

import hashlib
import json
import os
import struct

from etils import epath

from vit_jax.data import grain_pipeline
from vit_jax.data.registry import DatasetNotFoundError
from vit_jax.runtime import paths

METADATA = 'metadata.json'
FORMAT = 'vit_jax.arrayrecord/1'
# One record per group: what random access by index needs.
WRITER_OPTIONS = 'group_size:1'


def shard_name(split: str, index: int, count: int) -> str:
  return f'{split}-{index:05d}-of-{count:05d}.array_record'


def encode_record(image: bytes, label, key: str) -> bytes:
  """An example as one record: a 4-byte length, a JSON header with the
  label (an int, or a list of ints for multi-label data) and the key (the
  file or TFDS id it came from), then the encoded image as it was."""
  header = json.dumps({'label': label, 'key': key}, sort_keys=True).encode()
  return struct.pack('<I', len(header)) + header + image


def decode_record(record: bytes) -> tuple[bytes, object, str]:
  """(encoded image, label, key) of a record written by `encode_record`."""
  (length,) = struct.unpack_from('<I', record)
  header = json.loads(record[4:4 + length])
  return record[4 + length:], header['label'], header['key']


class ShardedRecords:
  """Random access to records numbered across a split's shards; opened
  lazily, so that Grain's worker processes each open their own readers."""

  def __init__(self, files: list[str]):
    self.files = files
    self._source = None

  def _records(self):
    if self._source is None:
      import grain  # pylint: disable=g-import-not-at-top
      self._source = grain.sources.ArrayRecordDataSource(self.files)
    return self._source

  def __len__(self) -> int:
    return len(self._records())

  def __getitem__(self, index: int) -> bytes:
    return self._records()[index]

  def __getstate__(self):
    return {'files': self.files, '_source': None}


def _local_copy(root: str, names: list[str], cache_dir: str | None) -> str:
  """A local folder holding `names` from the bucket folder `root`: each
  file copied once under a partial name, then renamed, so that a killed
  copy is redone and a finished one is kept."""
  cache = cache_dir or os.path.expanduser('~/.cache/vit_jax/arrayrecord')
  local = os.path.join(cache, hashlib.sha256(root.encode()).hexdigest()[:16])
  os.makedirs(local, exist_ok=True)
  for name in names:
    target = os.path.join(local, name)
    remote = epath.Path(root) / name
    if os.path.exists(target) and os.path.getsize(target) == remote.stat().length:
      continue
    partial = f'{target}.partial.{os.getpid()}'
    with remote.open('rb') as src, open(partial, 'wb') as dst:
      while chunk := src.read(1 << 24):
        dst.write(chunk)
    os.replace(partial, target)
  return local


class ArrayRecordSource(grain_pipeline.GrainSource):
  """The registry's `Source` for `arrayrecord:DIR`."""
  decode = staticmethod(decode_record)

  def __init__(self, root: str, cache_dir: str | None = None,
               workers: int = 0):
    self.root = self.name = root
    self.workers = workers
    metadata_path = epath.Path(root) / METADATA
    if not metadata_path.exists():
      raise DatasetNotFoundError(
          f'no ArrayRecord dataset at {root!r} ({METADATA} missing); write '
          f'one with: python -m vit_jax.data.convert --source folder:PATH '
          f'--out {root}')
    self.metadata = json.loads(metadata_path.read_text())
    if self.metadata.get('format') != FORMAT:
      raise DatasetNotFoundError(
          f'{metadata_path} has format {self.metadata.get("format")!r}; this '
          f'version reads {FORMAT!r}: convert the data again.')
    self.class_names = list(self.metadata['class_names'])
    self.num_classes = len(self.class_names)
    self.multi_label = bool(self.metadata.get('multi_label'))
    self.splits = self.metadata['splits']
    self.split_names = sorted(self.splits)
    self.cache_dir = cache_dir
    self._records: dict[str, ShardedRecords] = {}

  def split_size(self, name: str) -> int:
    return self.splits[name]['count']

  def records(self, name: str) -> ShardedRecords:
    if name not in self._records:
      shards = self.splits[name]['shards']
      folder = (_local_copy(self.root, shards, self.cache_dir)
                if paths.is_remote(self.root) else self.root)
      self._records[name] = ShardedRecords(
          [os.path.join(folder, shard) for shard in shards])
    return self._records[name]


def open_arrayrecord(argument: str, *, data_dir=None, config=None
                     ) -> ArrayRecordSource:
  del data_dir
  config = config or {}
  return ArrayRecordSource(argument, cache_dir=config.get('data_cache_dir'),
                           workers=config.get('data_workers') or 0)
