"""Grain pipelines over a random-access split: host batches for the
trainer, in an order that is a property of the global batch, not of the
processes that read it.

Training: the endless stream of a split is its examples, reshuffled every
epoch by a permutation seeded with (seed, epoch); global batch b holds
stream places [b * B, (b + 1) * B), and each process computes its
contiguous part of them. Each example is augmented with a generator seeded
by (seed, its place in the stream). So global batch b is the same on any
number of processes, devices or Grain workers, and the saveable state is b
alone: a run resumed on another topology sees the batches an uninterrupted
run would have seen. Batch ops (mixup, cutmix) mix each example with the
previous one of the global batch; each process also computes the example
before its part, so the mixing crosses process boundaries as it would on
one process.

Evaluation: every example exactly once on any number of processes; each
process pads its part to the same number of full batches, padding masked 0.

Grain parallelises whole host batches over threads (`threads`) and, with
`workers` > 0, over worker processes (Grain's mp_prefetch).
"""

import logging
import os
from typing import Callable, Iterator

import jax
from jax.experimental import multihost_utils
import numpy as np

from vit_jax.data import image_ops, splits
from vit_jax.data.registry import CorruptImageError, check_on_corrupt
from vit_jax.runtime.user_errors import ConfigError

# Distinct seed streams for the epoch order and for batch ops.
_ORDER_STREAM, _BATCH_STREAM = 1, 2
# On on_corrupt='skip', how many following examples may stand in.
_MAX_STAND_INS = 100


class Examples:
  """Examples [start, end) of a split's records, decoded to {'image':
  encoded bytes, 'label', 'key'}. Picklable, for Grain's workers."""

  def __init__(self, records, start: int, end: int, decode: Callable, *,
               num_classes: int, multi_label: bool, name: str):
    self.records, self.start, self.end = records, start, end
    self.decode, self.name = decode, name
    self.num_classes, self.multi_label = num_classes, multi_label

  def __len__(self) -> int:
    return self.end - self.start

  def __getitem__(self, index: int) -> dict:
    image, label, key = self.decode(self.records[self.start + index])
    if self.multi_label:
      hot = np.zeros(self.num_classes, np.float32)
      hot[np.asarray(label, np.int64)] = 1.0
      label = hot
    return {'image': image, 'label': label, 'key': key}


class EpochOrder:
  """Stream place -> example index: a fresh seeded permutation per epoch
  (the last two kept, as a batch may straddle an epoch's end)."""

  def __init__(self, size: int, seed: int):
    self.size, self.seed = size, seed
    self._epochs: dict[int, np.ndarray] = {}

  def __call__(self, place: int) -> int:
    epoch, offset = divmod(place, self.size)
    if epoch not in self._epochs:
      rng = np.random.default_rng((self.seed, _ORDER_STREAM, epoch))
      dtype = np.int32 if self.size < 2**31 else np.int64
      self._epochs = {e: p for e, p in self._epochs.items() if e == epoch - 1}
      self._epochs[epoch] = rng.permutation(self.size).astype(dtype)
    return int(self._epochs[epoch][offset])

  def __getstate__(self):
    return {'size': self.size, 'seed': self.seed, '_epochs': {}}


def _advice() -> str:
  return ('Convert the data again (the converter leaves out images that do '
          'not decode), or set --config.on_corrupt=skip to let the next '
          'example stand in (counted in the metric data/skipped_images).')


def _preprocessed(examples: Examples, preprocess, index: int, seed) -> dict:
  example = examples[index]
  try:
    return preprocess.example_fn(example, seed)
  except Exception as e:  # pylint: disable=broad-except
    raise CorruptImageError(
        f'cannot decode or preprocess image {example["key"]!r} (example '
        f'{index} of {examples.name}): {type(e).__name__}: '
        f'{str(e).splitlines()[0] if str(e) else ""}. {_advice()}') from None


def _stack(preprocess, examples: list[dict], onehot_classes: int | None) -> dict:
  labels = [e['label'] for e in examples]
  if onehot_classes and np.ndim(labels[0]) == 0:
    labels = np.eye(onehot_classes, dtype=np.float32)[np.asarray(labels)]
  else:
    labels = np.asarray(labels, np.float32 if np.ndim(labels[0]) else np.int32)
  return {'images': preprocess.batch_images([e['image'] for e in examples]),
          'labels': labels}


class TrainBatch:
  """Local batch b of this process: a pure function of b (picklable)."""

  def __init__(self, examples: Examples, *, pp: str, batch_size: int,
               seed: int, process_index: int, process_count: int,
               repeats: int, on_corrupt: str):
    self.examples, self.seed = examples, seed
    self.preprocess = image_ops.Preprocess(pp)
    self.batch_size, self.repeats = batch_size, repeats
    self.local = batch_size // process_count
    self.first = process_index * self.local
    self.on_corrupt = on_corrupt
    self.order = EpochOrder(len(examples), seed)

  def places(self, b: int) -> list[int]:
    """The stream places (in copies) this process computes for batch b;
    with batch ops, first the one before its part (the mixing partner)."""
    start = b * self.batch_size
    places = list(range(start + self.first, start + self.first + self.local))
    if self.preprocess.batch_ops:
      places.insert(0, start + (self.first - 1) % self.batch_size)
    return places

  def example(self, place: int) -> tuple[dict, int]:
    """(example, how many stood in for unreadable ones) at a stream place."""
    index = self.order(place // self.repeats)
    seed = (self.seed, place)
    for skipped in range(_MAX_STAND_INS + 1):
      try:
        return _preprocessed(self.examples, self.preprocess,
                             (index + skipped) % len(self.examples), seed), skipped
      except CorruptImageError:
        if self.on_corrupt == 'stop' or skipped == _MAX_STAND_INS:
          raise
    raise AssertionError('unreachable')

  def __call__(self, b: int) -> dict:
    made = [self.example(place) for place in self.places(int(b))]
    batch = _stack(self.preprocess, [example for example, _ in made],
                   self.examples.num_classes if self.preprocess.needs_onehot
                   else None)
    if self.preprocess.batch_ops:
      mixed = self.preprocess.batch_fn(
          {'image': batch['images'], 'label': batch['labels']},
          (self.seed, _BATCH_STREAM, int(b)))
      batch = {'images': mixed['image'][1:].astype(np.float32),
               'labels': mixed['label'][1:].astype(np.float32)}
    batch['skipped'] = np.int64(sum(skipped for _, skipped in made))
    return batch


def _process_part(what: str, batch_size: int, process_index, process_count
                  ) -> tuple[int, int, int]:
  """(process index, process count, per-process batch), the first two
  from JAX unless given."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if batch_size % process_count:
    raise ValueError(f'{what} batch size {batch_size} is not divisible by '
                     f'the {process_count} processes; choose a multiple.')
  return process_index, process_count, batch_size // process_count


def _gather_sum(value: int) -> int:
  if jax.process_count() == 1:
    return int(value)
  return int(np.asarray(multihost_utils.process_allgather(
      np.array([value], np.int64))).sum())


def _default_threads() -> int:
  return max(1, min(16, len(os.sched_getaffinity(0))))


def _grain_iterator(fn: Callable[[int], dict], start: int, stop: int,
                    threads: int | None, workers: int = 0):
  import grain  # pylint: disable=g-import-not-at-top
  threads = threads or _default_threads()
  ds = grain.MapDataset.range(start, stop).map(fn).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads))
  if workers:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():
      # Grain's workers read its absl flags (defaults unless given); outside
      # an absl app, such as in a notebook, nobody parsed them.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=2))
  return iter(ds)


class TrainIterator:
  """Endless host batches {'images', 'labels'} whose saveable state is the
  index of the next global batch."""

  def __init__(self, examples: Examples, *, pp: str, batch_size: int,
               seed: int = 0, on_corrupt: str = 'stop', repeats: int = 1,
               workers: int = 0, threads: int | None = None,
               process_index: int | None = None,
               process_count: int | None = None):
    check_on_corrupt(on_corrupt)
    process_index, process_count, _ = _process_part(
        'global', batch_size, process_index, process_count)
    if not isinstance(repeats, int) or repeats < 1:
      raise ConfigError(f'config.repeated_augmentation={repeats!r}: expected '
                        f'a whole number >= 1 (3 in DeiT, 1 for none).')
    if not len(examples):
      raise ValueError(f'{examples.name} has no examples.')
    self.batch = TrainBatch(
        examples, pp=pp, batch_size=batch_size, seed=seed,
        process_index=process_index, process_count=process_count,
        repeats=repeats, on_corrupt=on_corrupt)
    self.workers, self.threads = workers, threads
    self.next_batch = 0
    self.skipped = 0  # stand-ins for unreadable images, this process
    self._iterator = None

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._iterator is None:
      self._iterator = _grain_iterator(self.batch, self.next_batch, 2**62,
                                       self.threads, self.workers)
    batch = next(self._iterator)
    self.skipped += int(batch.pop('skipped'))
    self.next_batch += 1
    return batch

  def get_state(self) -> dict:
    """Collective on multi-host runs: every process must call it."""
    return {'next_batch': self.next_batch, 'order': 'global',
            'skipped': _gather_sum(self.skipped)}

  def set_state(self, state: dict) -> None:
    if state.get('order') != 'global':
      logging.warning('data state %s was saved by another input pipeline; '
                      'continuing at global batch %d.', state,
                      int(state['next_batch']))
    self.next_batch = int(state['next_batch'])
    # The total is logged once: process 0 carries what was skipped before.
    self.skipped = int(state.get('skipped', 0)) if jax.process_index() == 0 else 0
    self.close()

  def metrics(self) -> dict[str, float]:
    """Collective on multi-host runs, like get_state."""
    return {'data/skipped_images': float(_gather_sum(self.skipped))}

  def close(self) -> None:
    if self._iterator is not None and hasattr(self._iterator, 'close'):
      self._iterator.close()
    self._iterator = None


class EvalBatch:
  """Local eval batch b: this process's examples in order, padded with
  mask 0 (picklable)."""

  def __init__(self, examples: Examples, *, pp: str, local: int, start: int,
               end: int, on_corrupt: str):
    self.examples, self.local = examples, local
    self.start, self.end, self.on_corrupt = start, end, on_corrupt
    self.preprocess = image_ops.Preprocess(pp)

  def __call__(self, b: int) -> dict:
    made, mask = [], []
    for index in range(self.start + b * self.local,
                       self.start + (b + 1) * self.local):
      real = index < self.end
      try:
        example = _preprocessed(self.examples, self.preprocess,
                                index if real else self.start, (0, 0))
      except CorruptImageError:
        if self.on_corrupt == 'stop':
          raise
        example, real = None, False
      made.append(example)
      mask.append(1.0 if real else 0.0)
    template = next((e for e in made if e is not None), None)
    if template is None:
      raise CorruptImageError(f'no image of eval batch {b} of '
                              f'{self.examples.name} decodes.')
    blank = {'image': np.zeros_like(template['image']),
             'label': np.zeros_like(template['label'])}
    batch = _stack(self.preprocess, [e if e is not None else blank for e in made],
                   None)
    batch['mask'] = np.asarray(mask, np.float32)
    return batch


def eval_batches(examples: Examples, *, pp: str, batch_size: int,
                 on_corrupt: str = 'stop', cache: bool = False,
                 threads: int | None = None, process_index: int | None = None,
                 process_count: int | None = None
                 ) -> Callable[[], Iterator[dict]]:
  """A factory of fresh passes: host batches with a 'mask', the same
  number on every process."""
  check_on_corrupt(on_corrupt)
  process_index, process_count, local = _process_part(
      'eval', batch_size, process_index, process_count)
  if image_ops.Preprocess(pp).batch_ops:
    raise ValueError(f'eval op string {pp!r} has batch ops (mixup/cutmix); '
                     f'evaluation must not mix examples.')
  start, end = splits.process_range(len(examples), process_index, process_count)
  steps = -(-max(splits.process_counts(len(examples), process_count)) // local)
  batch = EvalBatch(examples, pp=pp, local=local, start=start, end=end,
                    on_corrupt=on_corrupt)
  kept: list[dict] = []

  def batches():
    if kept:
      yield from kept
      return
    made = []
    for host_batch in _grain_iterator(batch, 0, steps, threads):
      made.append(host_batch)
      yield host_batch
    if cache:
      kept.extend(made)
  return batches


class GrainSource:
  """The registry's `Source` methods for a source of random-access splits:
  subclasses set class_names, num_classes, multi_label, split_names,
  workers and `name`, and give `split_size(name)` and `records(name)`
  (indexable, picklable) with `decode(record) -> (image, label, key)`."""
  describes_data = True
  uses_pp = True
  multi_label = False
  workers = 0

  @staticmethod
  def parse_ops(pp: str) -> image_ops.Preprocess:
    return image_ops.Preprocess(pp)

  def _range(self, split: str) -> tuple[str, int, int]:
    return splits.slice_split(split, self.split_names, self.split_size)

  def process_counts(self, split: str, process_count: int) -> list[int]:
    _, start, end = self._range(split)
    return splits.process_counts(end - start, process_count)

  def examples(self, split: str) -> Examples:
    name, start, end = self._range(split)
    return Examples(self.records(name), start, end, self.decode,
                    num_classes=self.num_classes, multi_label=self.multi_label,
                    name=f'{self.name}/{split}')

  def train_input(self, split: str, *, pp: str, batch_size: int, seed: int,
                  on_corrupt: str, num_classes: int | None, repeats: int = 1,
                  threads: int | None = None, **unused) -> TrainIterator:
    del unused, num_classes  # the order is global: no shuffle buffer or cache
    return TrainIterator(
        self.examples(split), pp=pp, batch_size=batch_size, seed=seed,
        on_corrupt=on_corrupt, repeats=repeats, workers=self.workers,
        threads=threads)

  def eval_passes(self, split: str, *, pp: str, batch_size: int,
                  on_corrupt: str = 'stop', cache: bool = False, **unused):
    del unused
    return eval_batches(self.examples(split), pp=pp, batch_size=batch_size,
                        on_corrupt=on_corrupt, cache=cache)
