"""Data sources by the scheme of `dataset=`: parsing, and a source of one's
own (no tf.data) plugged in with one module and one registry line, read by
the same resolve / train input / eval passes as the built-in ones."""

import numpy as np
import pytest

from tiny_jobs import tiny_config
from vit_jax.config import resolve
from vit_jax.data import inputs, registry


@pytest.mark.parametrize('dataset,expected', [
    ('digits', ('digits', '')), ('synthetic', ('synthetic', '')),
    ('folder:/photos/x:y', ('folder', '/photos/x:y')),
    ('tfds_dir:gs://b/i21k/1.0.0', ('tfds_dir', 'gs://b/i21k/1.0.0')),
    ('cifar10', ('tfds', 'cifar10')), ('cifar10:3.*.*', ('tfds', 'cifar10:3.*.*')),
    ('digits:x', ('tfds', 'digits:x'))])
def test_schemes(dataset, expected):
  assert registry.scheme_of(dataset) == expected


SOURCE_MODULE = '''
import numpy as np

class Batches:
  def __init__(self, images, labels, batch_size):
    self.images, self.labels, self.batch_size, self.position = images, labels, batch_size, 0
  def __next__(self):
    index = np.arange(self.position, self.position + self.batch_size) % len(self.labels)
    self.position += self.batch_size
    return {'images': self.images[index], 'labels': self.labels[index]}
  def get_state(self):
    return {'position': self.position}
  def set_state(self, state):
    self.position = state['position']
  def metrics(self):
    return {}

class Numbers:
  """Each image is filled with its label / 10: 10 classes, 'train' 50, 'test' 20."""
  describes_data = True
  uses_pp = False
  num_classes = 10
  class_names = [f'n{i}' for i in range(10)]
  split_names = ['test', 'train']

  def __init__(self, size):
    self.size = size

  def _split(self, split):
    labels = np.arange(50 if split == 'train' else 20, dtype=np.int32) % 10
    images = np.broadcast_to(labels[:, None, None, None] / 10,
                             (len(labels), self.size, self.size, 3)).astype(np.float32)
    return images, labels

  def process_counts(self, split, process_count):
    return [len(self._split(split)[1])]

  def train_input(self, split, *, batch_size, **unused):
    return Batches(*self._split(split), batch_size)

  def eval_passes(self, split, *, batch_size, **unused):
    images, labels = self._split(split)
    def passes():
      for start in range(0, len(labels), batch_size):
        n = len(labels[start:start + batch_size])
        yield {'images': images[start:start + n], 'labels': labels[start:start + n],
               'mask': np.ones(n, np.float32)}
    return passes

def open_numbers(argument, *, data_dir=None, config=None):
  return Numbers(int(argument))
'''


def test_a_source_of_ones_own_is_one_module_and_one_registry_line(
    tmp_path, monkeypatch):
  (tmp_path / 'numbers_source.py').write_text(SOURCE_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setitem(registry.SOURCES, 'numbers', 'numbers_source:open_numbers')
  config = tiny_config({})
  config.dataset, config.num_classes = 'numbers:16', None
  config.train_split, config.eval_split = 'train', 'auto'
  config.batch_size, config.train_examples = None, None
  source = inputs.open_source(config)
  lines = []
  resolve.resolve(config, source, log=lines.append)
  assert lines[1:4] == ['from the data: 10 classes', "from the data: eval split 'test'",
                       'from the data: 50 training examples']
  assert config.batch_size == 8  # derived from the 50 examples
  batch = next(inputs.make_train_input(config, source))
  assert batch['images'].shape == (8, 16, 16, 3)
  np.testing.assert_array_equal(batch['labels'], np.arange(8))
  passes = inputs.eval_passes(config, source, config.eval_split)
  assert sum(int(b['mask'].sum()) for b in passes()) == 20
