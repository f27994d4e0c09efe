"""A learnable synthetic image-classification source, needing no files.

Each class has a fixed random template; an example is its class template
plus noise, so a model can learn it and a loss curve means something. Batch
`i` of the global stream is a pure function of (seed, i): resuming at batch i
continues the exact sequence, and each process takes its own contiguous
slice of every global batch.
"""

from typing import Iterator

import jax
import numpy as np


class SyntheticSource:
  """Batches of {'images': float32 (n, h, w, 3) in [-1, 1], 'labels': int32}."""

  def __init__(self, *, num_classes: int, image_size: int, batch_size: int,
               seed: int = 0, process_index: int = 0, process_count: int = 1,
               noise: float = 0.6):
    if batch_size % process_count:
      raise ValueError(f'global batch size {batch_size} is not divisible by '
                       f'the {process_count} processes; choose a multiple.')
    self.num_classes = num_classes
    self.image_size = image_size
    self.batch_size = batch_size
    self.seed = seed
    self.noise = noise
    self.local_batch_size = batch_size // process_count
    self._offset = process_index * self.local_batch_size
    # Low-frequency templates (8x8 upsampled) so patch models can see them.
    rng = np.random.default_rng([seed, 7])
    coarse = rng.uniform(-1, 1, (num_classes, 8, 8, 3)).astype(np.float32)
    reps = -(-image_size // 8)
    self._templates = np.repeat(np.repeat(coarse, reps, 1), reps, 2)[
        :, :image_size, :image_size]

  def batch(self, index: int) -> dict[str, np.ndarray]:
    """This process's part of global batch `index`."""
    rng = np.random.default_rng([self.seed, index])
    labels = rng.integers(0, self.num_classes, self.batch_size)
    noise = rng.standard_normal(
        (self.batch_size, self.image_size, self.image_size, 3), np.float32)
    part = slice(self._offset, self._offset + self.local_batch_size)
    images = self._templates[labels[part]] + self.noise * noise[part]
    return {'images': np.clip(images, -1, 1).astype(np.float32),
            'labels': labels[part].astype(np.int32)}


class BatchIterator:
  """Iterates a source's batches from a saveable position."""

  def __init__(self, source: SyntheticSource, start: int = 0):
    self.source = source
    self.next_batch = start

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.source.batch(self.next_batch)
    self.next_batch += 1
    return batch

  def get_state(self) -> dict[str, int]:
    return {'next_batch': self.next_batch}

  def set_state(self, state: dict[str, int]) -> None:
    self.next_batch = int(state['next_batch'])

  def metrics(self) -> dict[str, float]:
    return {}  # generated batches: nothing is ever skipped


# Eval batches come from this far along the stream: unseen examples of the
# same classes.
FIRST_EVAL_BATCH = 10**9


class SyntheticData:
  """The registry's `Source` for `dataset='synthetic'`: classes, image size,
  seed and the number of eval batches are the config's."""
  describes_data = False
  uses_pp = False  # generated batches, already at the model's size
  split_names = ['train', 'test']

  def __init__(self, config):
    self.config = config
    self.num_classes = config.num_classes
    self.class_names = None

  def _source(self, batch_size: int) -> SyntheticSource:
    config = self.config
    return SyntheticSource(
        batch_size=batch_size, seed=config.seed, num_classes=config.num_classes,
        image_size=config.image_size, process_index=jax.process_index(),
        process_count=jax.process_count())

  def process_counts(self, split: str, process_count: int) -> list[int]:
    del split
    return [self.config.train_examples // process_count] * process_count

  def train_input(self, split: str, *, batch_size: int, **unused) -> BatchIterator:
    del split, unused  # one generated stream; no preprocessing
    return BatchIterator(self._source(batch_size))

  def eval_passes(self, split: str, *, batch_size: int, **unused):
    del split, unused
    evaluation = self._source(batch_size)
    return lambda: (evaluation.batch(FIRST_EVAL_BATCH + i)
                    for i in range(self.config.eval_batches))


def open_synthetic(argument: str, *, data_dir=None, config=None) -> SyntheticData:
  del argument, data_dir
  return SyntheticData(config)
