"""tf.data pipelines from a source to host batches for the trainer.

Training: this process's examples, reshuffled every epoch with a seed of
(seed, epoch), numbered by their position in the endless stream; each
example is augmented with a seed of (seed, process, position), so the stream
of pixels is a pure function of the config. The saveable state is the
stream position, and a resumed iterator skips to it before any decoding.

Evaluation: every example exactly once on any number of processes. Each
process pads its part to the same number of full batches and marks padding
with mask 0.
"""

import logging
import re
from typing import Callable, Iterator

import numpy as np
import jax
from jax.experimental import multihost_utils

from vit_jax.data.ops import Preprocess
from vit_jax.data.registry import CorruptImageError, check_on_corrupt
from vit_jax.runtime.native_logs import import_tensorflow
from vit_jax.runtime.user_errors import ConfigError

tf = import_tensorflow()

_AUTOTUNE = tf.data.AUTOTUNE


def _model_batch(batch: dict) -> dict:
  out = {'images': batch['image'], 'labels': batch['label']}
  if 'mask' in batch:
    out['mask'] = batch['mask']
  return out


def _example_seed(seed: int, process_index: int, position):
  return tf.random.experimental.stateless_fold_in(
      tf.constant([seed, process_index], tf.int64), position)


def _error_line(error: Exception) -> str:
  """What a TensorFlow error says, without its graph and iterator context
  (e.g. 'DIR/cat/1.jpg; No such file or directory')."""
  text = re.sub(r'\[\[.*?\]\]|\{\{.*?\}\}|\[Op:[^\]]*\]|name:\s*$', '',
                str(error), flags=re.S).strip()
  first = text.splitlines()[0] if text else type(error).__name__
  return first.rsplit(': ', 1)[-1].strip()[:300]


def _check_fixed_size(spec: dict, pp: str) -> None:
  if not spec['image'].shape.is_fully_defined():
    raise ValueError(f'op string {pp!r} gives images of shape '
                     f'{spec["image"].shape}; end it with a fixed-size op '
                     f'such as central_crop(224) or resize(224).')


def _gather_per_process(values: np.ndarray) -> np.ndarray:
  """Per-process integer vectors -> stacked (processes, n) on every host."""
  if jax.process_count() == 1:
    return values[None]
  return np.asarray(multihost_utils.process_allgather(values))


class TrainIterator:
  """Endless host batches {'images', 'labels'} with a saveable position."""

  def __init__(self, source, split: str, *, pp: str, batch_size: int,
               seed: int = 0, shuffle_buffer: int = 250_000,
               cache_raw: bool = False, on_corrupt: str = 'stop',
               num_classes: int | None = None, process_index: int = 0,
               process_count: int = 1, threads: int | None = None,
               repeats: int = 1):
    check_on_corrupt(on_corrupt)
    self.threads = threads  # tf.data worker threads (None: all cores)
    if batch_size % process_count:
      raise ValueError(f'global batch size {batch_size} is not divisible by '
                       f'the {process_count} processes; choose a multiple.')
    self.local_batch_size = batch_size // process_count
    # Repeated augmentation (Hoffer et al. 2020; DeiT's RASampler): each
    # image read goes into the batches `repeats` times in a row, each copy
    # with its own augmentation (in one batch when `repeats` divides the
    # per-process batch; otherwise a group may end in the next batch). The
    # stream advances `repeats` times slower, so an epoch of steps sees
    # 1/repeats of the images, as in DeiT. The copies stay on the process
    # that read the image: for a model without batch statistics, where in
    # the global batch they sit changes nothing.
    if not isinstance(repeats, int) or repeats < 1:
      raise ConfigError(f'config.repeated_augmentation={repeats!r}: expected '
                        f'a whole number >= 1 (3 in DeiT, 1 for none).')
    self.repeats = repeats
    self.preprocess = Preprocess(pp)
    self.seed, self.shuffle_buffer = seed, shuffle_buffer
    self.on_corrupt, self.num_classes = on_corrupt, num_classes
    self.process_index, self.process_count = process_index, process_count
    self.raw, self.num_local = source.read(split, process_index, process_count)
    if cache_raw:
      self.raw = self.raw.cache()
    if self.num_local == 0:
      raise ValueError(f'process {process_index} has no examples of split '
                       f'{split!r}; use a larger split or fewer processes.')
    self.position = 0      # stream elements (x repeats) consumed here
    self.next_batch = 0    # global batches produced (same on every process)
    self.skipped = 0       # corrupt images skipped by this process
    self._iterator = None

  def _stream(self, position: int) -> tf.data.Dataset:
    """Raw elements with their 'position' in the endless stream."""
    n, raw, seed = self.num_local, self.raw, self.seed
    buffer = max(1, min(self.shuffle_buffer, n))

    def epoch(e):
      shuffled = raw.shuffle(buffer, seed=seed * 1_000_003 + e,
                             reshuffle_each_iteration=False)
      return shuffled.enumerate().map(
          lambda i, ex: {**ex, 'position': e * n + i})
    first_epoch, offset = divmod(position, n)
    return tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch).skip(offset)

  def _example(self, ex: dict) -> dict:
    seed = _example_seed(self.seed, self.process_index, ex['position'])
    if self.repeats > 1:
      seed = tf.random.experimental.stateless_fold_in(seed, ex['copy'])
    out = self.preprocess.example_fn(ex, seed)
    label = out['label']
    if self.preprocess.needs_onehot and label.dtype.is_integer:
      label = tf.one_hot(label, self.num_classes)
    position = ex['position']
    if self.repeats > 1:
      position = position * self.repeats + ex['copy']
    return {'image': out['image'], 'label': label, 'position': position}

  def _copies(self, position: int) -> tf.data.Dataset:
    """The stream from `position` (in copies): each element `repeats`
    times in a row, numbered by 'copy'."""
    if self.repeats == 1:
      return self._stream(position)
    element, copy = divmod(position, self.repeats)
    copies = tf.data.Dataset.range(self.repeats)
    return self._stream(element).flat_map(
        lambda ex: copies.map(lambda c: {**ex, 'copy': c})).skip(copy)

  def _build(self) -> Iterator[dict]:
    ds = self._copies(self.position).map(
        self._example, num_parallel_calls=_AUTOTUNE, deterministic=True)
    _check_fixed_size(ds.element_spec, self.preprocess.spec)
    if self.on_corrupt == 'skip':
      ds = ds.ignore_errors()
    ds = ds.batch(self.local_batch_size, drop_remainder=True)
    if self.preprocess.batch_ops:
      seed = tf.constant([self.seed, self.process_index], tf.int64)
      ds = ds.enumerate(start=self.next_batch).map(
          lambda b, batch: self.preprocess.batch_fn(
              batch, tf.random.experimental.stateless_fold_in(seed, b)),
          num_parallel_calls=_AUTOTUNE, deterministic=True)
    if self.threads:
      options = tf.data.Options()
      options.threading.private_threadpool_size = self.threads
      ds = ds.with_options(options)
    return ds.prefetch(_AUTOTUNE).as_numpy_iterator()

  def _find_corrupt(self) -> CorruptImageError:
    """Re-runs examples one by one from the current position to name the one
    that fails (only after an error, so no cost otherwise): one that cannot
    be read (e.g. deleted since the run started) fails in the stream itself,
    one that cannot be decoded in its preprocessing."""
    stream = iter(self._stream(self.position // self.repeats).take(
        64 * self.local_batch_size + 1024))
    advice = ('Remove or fix the file, or set --config.on_corrupt=skip to skip '
              'such images (counted in the metric data/skipped_images).')
    while True:
      try:
        ex = next(stream)
      except StopIteration:
        break
      except tf.errors.OpError as e:
        return CorruptImageError(
            f'cannot read an image of the dataset: {_error_line(e)}. {advice}')
      try:
        self._example({**ex, 'copy': tf.constant(0, tf.int64)})
      except (tf.errors.OpError, ValueError) as e:
        key = ex['key'].numpy().decode()
        return CorruptImageError(
            f'cannot decode or preprocess image {key!r}: '
            f'{str(e).splitlines()[0]}. {advice}')
    return CorruptImageError('the input pipeline failed, but no single image '
                             'reproduces the error; see the error above.')

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._iterator is None:
      self._iterator = self._build()
    try:
      batch = next(self._iterator)
    except tf.errors.OpError as e:
      raise self._find_corrupt() from e
    end = int(batch.pop('position')[-1]) + 1
    self.skipped += end - self.position - self.local_batch_size  # copies
    self.position = end
    self.next_batch += 1
    return _model_batch(batch)

  def get_state(self) -> dict:
    """Collective on multi-host runs: every process must call it."""
    per_process = _gather_per_process(np.array([self.position, self.skipped]))
    return {'next_batch': self.next_batch,
            'positions': [int(p) for p in per_process[:, 0]],
            'skipped': [int(s) for s in per_process[:, 1]]}

  def set_state(self, state: dict) -> None:
    self.next_batch = int(state['next_batch'])
    positions = state.get('positions', [])
    if len(positions) == self.process_count:
      self.position = int(positions[self.process_index])
      self.skipped = int(state['skipped'][self.process_index])
    else:
      # Another process count splits the data differently; keep the epoch
      # count, lose the exact order.
      self.position = self.next_batch * self.local_batch_size
      logging.warning('data state saved by %d processes, restored on %d: '
                      'continuing at the same number of examples per process '
                      'but not the same order.', len(positions),
                      self.process_count)
    self._iterator = None

  def metrics(self) -> dict[str, float]:
    """Collective on multi-host runs, like get_state."""
    return {'data/skipped_images': float(_gather_per_process(
        np.array([self.skipped]))[:, 0].sum()) / self.repeats}


def eval_batches(source, split: str, *, pp: str, batch_size: int,
                 process_index: int = 0, process_count: int = 1,
                 on_corrupt: str = 'stop', cache: bool = False
                 ) -> Callable[[], Iterator[dict]]:
  """A factory of fresh passes over `split`: host batches with a 'mask'.
  Every process yields the same number of batches."""
  check_on_corrupt(on_corrupt)
  if batch_size % process_count:
    raise ValueError(f'eval batch size {batch_size} is not divisible by the '
                     f'{process_count} processes; choose a multiple.')
  local = batch_size // process_count
  preprocess = Preprocess(pp)
  if preprocess.batch_ops:
    raise ValueError(f'eval op string {pp!r} has batch ops (mixup/cutmix); '
                     f'evaluation must not mix examples.')
  raw, _ = source.read(split, process_index, process_count)
  steps = -(-max(source.process_counts(split, process_count)) // local)

  def example(ex):
    out = preprocess.example_fn(ex, tf.constant([0, 0], tf.int64))
    return {'image': out['image'], 'label': out['label'],
            'mask': tf.constant(1.0)}
  ds = raw.map(example, num_parallel_calls=_AUTOTUNE, deterministic=True)
  if on_corrupt == 'skip':
    ds = ds.ignore_errors()
  spec = ds.element_spec
  _check_fixed_size(spec, pp)
  padding = tf.data.Dataset.from_tensors(
      {k: tf.zeros(s.shape, s.dtype) for k, s in spec.items()}).repeat()
  ds = ds.concatenate(padding).take(steps * local).batch(local)
  if cache:
    ds = ds.cache()
  ds = ds.prefetch(_AUTOTUNE)

  def batches():
    for batch in ds.as_numpy_iterator():
      yield _model_batch(batch)
  return batches
