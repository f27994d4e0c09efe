"""Converts a dataset into ArrayRecord shards for `dataset=arrayrecord:OUT`.

  python -m vit_jax.data.convert --source folder:/photos --out /data/photos_ar
  python -m vit_jax.data.convert --source tfds:imagenet2012 --out gs://b/i1k \
      --shards 1024 --workers 32

Every split of the source (or those in --splits) becomes
OUT/<split>-NNNNN-of-MMMMM.array_record shards holding each example's
encoded image as it was (arrays, as in 'digits', become PNGs), its label
and its key, in the source's order: shard j holds the j-th contiguous part
of the split. OUT/metadata.json, written last, names the classes, the
splits, their counts and shards, and the images left out.

Idempotent and resumable: a shard is written under a partial name and
renamed when complete, after its record of counts (OUT/.shards/); a run
finds the finished shards and does only the others, so a killed
conversion picks up where it stopped and a finished shard is never
rewritten. The output is a pure function of the source and --shards:
byte for byte the same however often it was interrupted.

An image that does not decode is named on one line and left out (or, with
--on_corrupt=stop, stops the conversion).
"""

import io
import json
import multiprocessing
import os
import queue
import shutil
import sys
import tempfile

from absl import flags
from etils import epath
import numpy as np

from vit_jax import app
from vit_jax.data import arrayrecord, grain_pipeline, image_ops, registry, splits
from vit_jax.runtime import paths
from vit_jax.runtime.user_errors import UserError

CONVERTER_VERSION = 1
SHARD_RECORDS = '.shards'
_PROGRESS_EVERY = 32


class ConversionError(UserError):
  """The conversion cannot go on; the message says why and what to do."""


def define_flags():
  flags.DEFINE_string('source', None, 'folder:PATH, tfds:NAME[:VERSION], '
                      'tfds_dir:PATH or digits.')
  flags.DEFINE_string('out', None, 'Output folder (local or gs://).')
  flags.DEFINE_list('splits', [], 'Splits to convert (default: all).')
  flags.DEFINE_integer('shards', None, 'Shards of the largest split (others '
                       'in proportion, at least 1); default: one per 10,000 '
                       'examples.')
  flags.DEFINE_integer('workers', 1, 'Processes converting shards in parallel.')
  flags.DEFINE_enum('on_corrupt', 'skip', ['skip', 'stop'],
                    'An image that does not decode: leave it out (named on '
                    'the console and in metadata.json) or stop.')
  flags.DEFINE_string('data_dir', None, 'TFDS data_dir for tfds: sources.')


def _open(source: str, data_dir: str | None):
  scheme, _ = registry.scheme_of(source)
  if scheme in ('synthetic', 'arrayrecord'):
    raise ConversionError(
        f'--source {source}: expected folder:PATH, tfds:NAME, tfds_dir:PATH '
        f'or digits; {scheme} data has nothing to convert.')
  dataset = source[len('tfds:'):] if source.startswith('tfds:') else source
  return registry.open_source(dataset, data_dir=data_dir)


def _encoded(image) -> bytes:
  """Encoded bytes as the source holds them; arrays become PNGs."""
  if isinstance(image, bytes):
    return image
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(out, format='PNG')
  return out.getvalue()


def _undecodable(data: bytes) -> str | None:
  """Why `data` is not an image the Grain path can decode, or None."""
  try:
    image_ops.decode_image(data)
    return None
  except ValueError as e:
    return str(e)


def _key(raw_key: bytes | str, root: str | None) -> str:
  key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
  if root and key.startswith(root.rstrip('/') + '/'):
    key = key[len(root.rstrip('/')) + 1:]
  return key


def _label(label, multi_label: bool):
  if multi_label:
    return [int(i) for i in np.flatnonzero(np.asarray(label) > 0)]
  return int(label)


class _Shard:
  """One shard's job: split part j of k, written to `out`."""

  def __init__(self, split: str, index: int, count: int, out: str):
    self.split, self.index, self.count, self.out = split, index, count, out
    self.name = arrayrecord.shard_name(split, index, count)

  @property
  def record_path(self) -> epath.Path:
    return epath.Path(self.out) / SHARD_RECORDS / f'{self.name}.json'

  def done(self) -> bool:
    return ((epath.Path(self.out) / self.name).exists()
            and self.record_path.exists())


# Per worker process: the opened source, and where progress goes.
_WORKER: dict = {}


def _start_worker(source: str, data_dir, on_corrupt: str, messages) -> None:
  _WORKER.update(source=_open(source, data_dir), on_corrupt=on_corrupt,
                 messages=messages)


def _write_shard(shard: _Shard) -> dict:
  """Writes one shard; returns its record of counts."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  source, messages = _WORKER['source'], _WORKER['messages']
  root = getattr(source, 'root', None)
  multi_label = getattr(source, 'multi_label', False)
  examples = _examples_of(source, shard)
  # A shard bound for a bucket is written locally, then uploaded whole.
  local_dir = (tempfile.mkdtemp(prefix='vit_jax_convert_')
               if paths.is_remote(shard.out) else shard.out)
  partial = os.path.join(local_dir, f'.{shard.name}.partial')
  writer = array_record_module.ArrayRecordWriter(
      partial, arrayrecord.WRITER_OPTIONS)
  written, left_out, pending = 0, [], 0
  for example in examples:
    key = _key(example['key'], root)
    data = _encoded(example['image'])
    why = _undecodable(data)
    if why:
      if _WORKER['on_corrupt'] == 'stop':
        writer.close()
        os.remove(partial)
        raise ConversionError(
            f'cannot decode {key!r} of split {shard.split!r}: {why}; remove '
            f'or fix it, or run with --on_corrupt=skip to leave it out.')
      left_out.append(key)
      messages.put(('line', f'left out {key}: {why}'))
    else:
      writer.write(arrayrecord.encode_record(
          data, _label(example['label'], multi_label), key))
      written += 1
    pending += 1
    if pending == _PROGRESS_EVERY:
      messages.put(('progress', pending))
      pending = 0
  writer.close()
  messages.put(('progress', pending))
  record = {'count': written, 'left_out': left_out}
  paths.write_atomically(shard.record_path, json.dumps(record, sort_keys=True))
  target = epath.Path(shard.out) / shard.name
  if paths.is_remote(shard.out):
    with open(partial, 'rb') as src, target.open('wb') as dst:
      shutil.copyfileobj(src, dst, 1 << 24)
    shutil.rmtree(local_dir)
  else:
    os.replace(partial, os.fspath(target))
  return record


def _examples_of(source, shard: _Shard):
  """The examples of the shard's part of its split, as numpy dicts."""
  if isinstance(source, grain_pipeline.GrainSource):
    examples = source.examples(shard.split)
    start, end = splits.process_range(len(examples), shard.index, shard.count)
    return (examples[i] for i in range(start, end))
  ds, _ = source.read(shard.split, shard.index, shard.count)
  return ds.as_numpy_iterator()


def _shard_counts(sizes: dict[str, int], shards: int | None) -> dict[str, int]:
  largest = max(sizes.values())
  if shards is None:
    shards = max(1, -(-largest // 10_000))
  return {split: max(1, min(size, round(shards * size / largest)))
          for split, size in sizes.items()}


def convert(source: str, out: str, *, split_names=(), shards=None, workers=1,
            on_corrupt='skip', data_dir=None, progress=True,
            log=print) -> dict:
  """Converts `source` into `out`; returns the metadata written."""
  opened = _open(source, data_dir)
  names = list(split_names) or list(opened.split_names)
  if not names:
    raise ConversionError(f'--source {source} lists no splits; name them '
                          f'with --splits, e.g. --splits train,test.')
  # A TFDS builder without split metadata lists none: its reads then say
  # which splits exist.
  unknown = sorted(set(names) - set(opened.split_names))
  if unknown and opened.split_names:
    raise ConversionError(f'--splits {",".join(unknown)}: {source} has splits '
                          f'{opened.split_names}.')
  sizes = {name: opened.process_counts(name, 1)[0] for name in names}
  counts = _shard_counts(sizes, shards)
  jobs = [_Shard(name, j, counts[name], out)
          for name in names for j in range(counts[name])]
  todo = [job for job in jobs if not job.done()]
  total = sum(sizes.values())
  remaining = sum(np.diff(splits.process_range(sizes[job.split], job.index,
                                               job.count))[0] for job in todo)
  log(f'{source}: {total} examples in {len(names)} splits '
      f'({", ".join(f"{n} {sizes[n]}" for n in names)}); {len(jobs)} shards, '
      f'{len(jobs) - len(todo)} already written.')
  epath.Path(out).mkdir(parents=True, exist_ok=True)
  if todo:
    _run_jobs(todo, source, data_dir, on_corrupt, workers, remaining, progress)
  splits_meta = {}
  for name in names:
    records = [json.loads(job.record_path.read_text())
               for job in jobs if job.split == name]
    splits_meta[name] = {
        'count': sum(r['count'] for r in records),
        'shards': [job.name for job in jobs if job.split == name],
        'shard_counts': [r['count'] for r in records],
        'left_out': [k for r in records for k in r['left_out']]}
  metadata = {
      'format': arrayrecord.FORMAT, 'converter_version': CONVERTER_VERSION,
      'source': source, 'class_names': list(opened.class_names),
      'multi_label': bool(getattr(opened, 'multi_label', False)),
      'splits': splits_meta}
  paths.write_atomically(epath.Path(out) / arrayrecord.METADATA,
                         json.dumps(metadata, indent=1, sort_keys=True))
  left = sum(len(s['left_out']) for s in splits_meta.values())
  log(f'wrote {out}: ' + ', '.join(f'{n} {s["count"]}' for n, s in
                                   splits_meta.items())
      + (f'; {left} images left out (listed in metadata.json)' if left else '')
      + f'. Train on it with --config.dataset=arrayrecord:{out}')
  return metadata


def _run_jobs(todo, source, data_dir, on_corrupt, workers, remaining, progress):
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  bar = tqdm(total=remaining, unit='img', disable=not progress,
             dynamic_ncols=True, file=sys.stderr)

  def handle(message):
    kind, value = message
    if kind == 'progress':
      bar.update(value)
    else:
      bar.write(value, file=sys.stdout)

  try:
    if workers <= 1:
      messages = queue.SimpleQueue()
      _start_worker(source, data_dir, on_corrupt, messages)
      for job in todo:
        _write_shard(job)
        while not messages.empty():
          handle(messages.get())
      return
    context = multiprocessing.get_context('spawn')
    messages = context.Manager().Queue()
    with context.Pool(min(workers, len(todo)), _start_worker,
                      (source, data_dir, on_corrupt, messages)) as pool:
      pending = [pool.apply_async(_write_shard, (job,)) for job in todo]
      while pending:
        try:
          handle(messages.get(timeout=0.2))
        except queue.Empty:
          pass
        for result in [r for r in pending if r.ready()]:
          result.get()  # raises a worker's error here
          pending.remove(result)
      while not messages.empty():
        handle(messages.get())
  finally:
    bar.close()


def main():
  args = flags.FLAGS
  convert(args.source, paths.absolute_path(args.out), split_names=args.splits,
          shards=args.shards, workers=args.workers,
          on_corrupt=args.on_corrupt, data_dir=args.data_dir)


def run() -> None:
  define_flags()
  app.run(main, required=('source', 'out'), distributed=False)


if __name__ == '__main__':
  run()
