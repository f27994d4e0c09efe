"""Input pipelines end to end: TFDS (mocked and real tiny), folders, digits."""

import collections
import os

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from vit_jax.config import resolve
from vit_jax.data import pipeline, registry, sources, synthetic
from vit_jax.runtime.user_errors import ConfigError


class TinyNumbered(tfds.core.GeneratorBasedBuilder):
  """Example i is an 8x8 image filled with the value i (label i % 3), so a
  decoded pixel says which example it was."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(8, 8, 3)),
        'label': tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(0, 23),
            'test': self._generate_examples(100, 110)}

  def _generate_examples(self, start, end):
    for i in range(start, end):
      yield i, {'image': np.full((8, 8, 3), i, np.uint8), 'label': i % 3}


@pytest.fixture(scope='module')
def tiny_tfds(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  TinyNumbered(data_dir=data_dir).download_and_prepare()
  return sources.TfdsSource('tiny_numbered', data_dir)


def example_ids(batch):
  """Recovers i from images filled with i, in [-1, 1]."""
  return np.round((batch['images'][:, 0, 0, 0] + 1) / 2 * 255).astype(int)


def _mock(num_examples=6):
  return tfds.testing.mock_data(num_examples=num_examples,
                                policy=tfds.testing.MockPolicy.USE_CODE)


@pytest.mark.parametrize('name,classes', [('imagenet2012', 1000), ('cifar10', 10)])
def test_mocked_tfds_train_and_eval_pipelines(name, classes, tmp_path):
  with _mock(6):
    source = sources.TfdsSource(name, str(tmp_path))
    assert source.num_classes == classes
    train = pipeline.TrainIterator(
        source, 'train', pp='decode_inception_crop(32)|flip_lr|randaug(2,10)',
        batch_size=4, seed=1)
    for _ in range(3):  # crosses an epoch boundary (6 examples)
      batch = next(train)
      assert batch['images'].shape == (4, 32, 32, 3)
      assert batch['images'].dtype == np.float32
      assert -1 <= batch['images'].min() and batch['images'].max() <= 1
      assert batch['images'].std() > 0.05  # real pixels, not a constant
      assert batch['labels'].dtype == np.int32 and batch['labels'].shape == (4,)
      assert ((0 <= batch['labels']) & (batch['labels'] < classes)).all()
    assert train.position == 12
    split = 'validation' if name == 'imagenet2012' else 'test'
    evaluation = pipeline.eval_batches(
        source, split, pp='decode|resize_small(36)|central_crop(32)',
        batch_size=4)
    batches = list(evaluation())
  assert [b['images'].shape for b in batches] == [(4, 32, 32, 3)] * 2
  assert [b['mask'].tolist() for b in batches] == [[1] * 4, [1, 1, 0, 0]]
  assert all(-1 <= b['images'].min() and b['images'].max() <= 1 for b in batches)


REAL_LABELS = [[], [3], [1, 5, 999]]  # ReaL has images with no, one, several


def _real_examples(*args, **kwargs):
  """imagenet2012_real's validation examples as the builder gives them to
  the source (images still encoded), with the label lists above."""
  del args, kwargs
  image = tf.io.encode_png(tf.zeros((4, 4, 3), tf.uint8))

  def examples():
    for i, labels in enumerate(REAL_LABELS):
      yield {'image': image, 'real_label': np.array(labels, np.int64),
             'label': np.int64(labels[0] if labels else 0),
             'file_name': f'ILSVRC2012_val_{i:08d}.JPEG',
             'tfds_id': f'imagenet2012_real-validation.tfrecord@1-{i}'}
  return tf.data.Dataset.from_generator(examples, output_signature={
      'image': tf.TensorSpec([], tf.string),
      'real_label': tf.TensorSpec([None], tf.int64),
      'label': tf.TensorSpec([], tf.int64),
      'file_name': tf.TensorSpec([], tf.string),
      'tfds_id': tf.TensorSpec([], tf.string)})


def test_imagenet_real_label_lists_become_multi_hot_rows(tmp_path):
  with tfds.testing.mock_data(as_dataset_fn=_real_examples,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    source = sources.TfdsSource('imagenet2012_real', str(tmp_path),
                                label_key='real_label')
    batch = next(pipeline.eval_batches(
        source, 'validation', pp='decode|resize(16)', batch_size=4)())
  assert batch['labels'].shape == (4, 1000) and batch['labels'].dtype == np.float32
  rows = [sorted(np.flatnonzero(row).tolist()) for row in batch['labels']]
  assert rows == REAL_LABELS + [[]]  # the fourth row pads the batch
  assert batch['mask'].tolist() == [1, 1, 1, 0]
  assert set(np.unique(batch['labels'])) == {0.0, 1.0}


def test_missing_imagenet_says_where_to_put_it(tmp_path):
  source = sources.TfdsSource('imagenet2012', str(tmp_path))
  with pytest.raises(registry.DatasetNotFoundError) as error:
    source.read('train', 0, 1)
  message = str(error.value)
  assert f'{tmp_path}/downloads/manual/' in message
  assert 'ILSVRC2012_img_train.tar' in message
  assert f'tfds build imagenet2012 --data_dir={tmp_path}' in message


def test_unknown_dataset_name_points_to_folders():
  with pytest.raises(registry.DatasetNotFoundError, match='folder:/path'):
    registry.open_source('imagenet_twentytwo_k')


@pytest.mark.parametrize('process_count', [2, 3])
def test_process_splits_are_disjoint_and_cover_the_split(tiny_tfds, process_count):
  seen = []
  for index in range(process_count):
    evaluation = pipeline.eval_batches(
        tiny_tfds, 'train', pp='decode|resize(8)', batch_size=process_count * 4,
        process_index=index, process_count=process_count)
    for batch in evaluation():
      seen += example_ids(batch)[batch['mask'] > 0].tolist()
  assert sorted(seen) == list(range(23))
  counts = tiny_tfds.process_counts('train', process_count)
  assert sum(counts) == 23 and max(counts) - min(counts) <= 1


def test_process_training_streams_are_disjoint(tiny_tfds):
  first_epoch = []
  for index in range(2):
    train = pipeline.TrainIterator(tiny_tfds, 'train', pp='decode|resize(8)',
                                   batch_size=2, process_index=index,
                                   process_count=2, seed=3)
    ids = np.concatenate([example_ids(next(train))
                          for _ in range(train.num_local)])
    assert len(set(ids.tolist())) == train.num_local
    first_epoch.append(set(ids.tolist()))
  assert not first_epoch[0] & first_epoch[1]
  assert first_epoch[0] | first_epoch[1] == set(range(23))


@pytest.mark.parametrize('batch_size,process_count', [(7, 1), (8, 2), (64, 2)])
def test_eval_counts_every_digit_exactly_once(batch_size, process_count):
  source = sources.digits_source()
  labels, batches_per_process = [], []
  for index in range(process_count):
    evaluation = pipeline.eval_batches(
        source, 'test', pp='', batch_size=batch_size,
        process_index=index, process_count=process_count)
    batches = list(evaluation())
    batches_per_process.append(len(batches))
    for batch in batches:
      assert batch['images'].shape == (batch_size // process_count, 8, 8, 3)
      labels += batch['labels'][batch['mask'] > 0].tolist()
  assert len(set(batches_per_process)) == 1  # same step count on every host
  assert len(labels) == 360
  assert np.bincount(labels).tolist() == [36] * 10


def test_resumed_iterator_continues_with_the_next_batch():
  source = sources.digits_source()
  kwargs = dict(pp='pad(1)|random_crop(8)|randaug(2,10)|mixup(0.5)',
                batch_size=200, seed=5, num_classes=10)
  uninterrupted = pipeline.TrainIterator(source, 'train', **kwargs)
  reference = [next(uninterrupted) for _ in range(10)]  # about 1.4 epochs
  first = pipeline.TrainIterator(source, 'train', **kwargs)
  for _ in range(6):
    next(first)
  state = first.get_state()
  assert state == {'next_batch': 6, 'positions': [1200], 'skipped': [0]}
  resumed = pipeline.TrainIterator(source, 'train', **kwargs)
  resumed.set_state(state)
  for expected in reference[6:]:
    batch = next(resumed)
    np.testing.assert_array_equal(batch['images'], expected['images'])
    np.testing.assert_array_equal(batch['labels'], expected['labels'])


def test_synthetic_batches_resume_from_their_state():
  source = synthetic.SyntheticSource(num_classes=10, image_size=8, batch_size=4)
  batches = synthetic.BatchIterator(source)
  for _ in range(3):
    next(batches)
  assert batches.get_state() == {'next_batch': 3}
  resumed = synthetic.BatchIterator(source)
  resumed.set_state({'next_batch': 3})
  np.testing.assert_array_equal(next(resumed)['images'], source.batch(3)['images'])


def test_epochs_visit_every_training_example_once(tiny_tfds):
  train = pipeline.TrainIterator(tiny_tfds, 'train', pp='decode|resize(8)', batch_size=1,
                                 seed=0)
  ids = [int(example_ids(next(train))[0]) for _ in range(46)]
  assert sorted(ids[:23]) == sorted(ids[23:]) == list(range(23))
  assert ids[:23] != ids[23:]  # reshuffled every epoch
  assert ids[:23] != list(range(23))


def test_digits_split_is_fixed_and_stratified():
  source = sources.digits_source()
  assert source.images.shape == (1797, 8, 8, 3) and source.images.dtype == np.uint8
  assert source.images.max() == 255
  assert len(source.splits['train']) == 1437 and len(source.splits['test']) == 360
  assert not set(source.splits['train']) & set(source.splits['test'])
  assert np.bincount(source.labels[source.splits['test']]).tolist() == [36] * 10


@pytest.mark.parametrize('split,expected', [
    ('train', (0, 100)), ('train[:10%]', (0, 10)), ('train[90%:]', (90, 100)),
    ('train[5:20]', (5, 20)), ('train[-10:]', (90, 100))])
def test_split_slices(split, expected):
  assert sources.slice_split(split, ['train'], lambda name: 100)[1:] == expected


def test_unknown_split_names_the_known_ones():
  with pytest.raises(registry.DatasetNotFoundError, match=r"\['test', 'train'\]"):
    sources.digits_source().read('validation', 0, 1)


def _write_folder(root, corrupt=False):
  rng = np.random.default_rng(0)
  for split, count in (('train', 3), ('val', 2)):
    for cls in ('cat', 'dog'):
      os.makedirs(root / split / cls)
      for i in range(count):
        pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
        encoded = tf.io.encode_png(pixels) if i % 2 else tf.io.encode_jpeg(pixels)
        (root / split / cls / f'{i}.{"png" if i % 2 else "jpg"}').write_bytes(
            encoded.numpy())
  if corrupt:
    (root / 'train' / 'dog' / 'broken.jpg').write_bytes(b'\xff\xd8not a jpeg')


def test_image_folder_source(tmp_path):
  _write_folder(tmp_path)
  source = registry.open_source(f'folder:{tmp_path}')
  assert source.classes == ['cat', 'dog'] and source.num_classes == 2
  train = pipeline.TrainIterator(source, 'train', batch_size=6, seed=0,
                                 pp='decode_inception_crop(16)|flip_lr')
  batch = next(train)
  assert batch['images'].shape == (6, 16, 16, 3)
  assert sorted(batch['labels'].tolist()) == [0, 0, 0, 1, 1, 1]
  evaluation = pipeline.eval_batches(source, 'val', batch_size=3,
                                     pp='decode|resize_small(18)|central_crop(16)')
  masks = [b['mask'].tolist() for b in evaluation()]
  assert masks == [[1, 1, 1], [1, 0, 0]]


def test_corrupt_image_stops_with_its_file_name(tmp_path):
  _write_folder(tmp_path, corrupt=True)
  source = registry.open_source(f'folder:{tmp_path}')
  train = pipeline.TrainIterator(source, 'train', batch_size=7, seed=0,
                                 pp='decode|resize(16)')
  with pytest.raises(pipeline.CorruptImageError) as error:
    next(train)
  assert str(tmp_path / 'train' / 'dog' / 'broken.jpg') in str(error.value)
  assert 'on_corrupt=skip' in str(error.value)


def test_corrupt_image_is_skipped_and_counted(tmp_path):
  _write_folder(tmp_path, corrupt=True)
  source = registry.open_source(f'folder:{tmp_path}')
  train = pipeline.TrainIterator(source, 'train', batch_size=6, seed=0,
                                 pp='decode|resize(16)', on_corrupt='skip')
  batches = [next(train) for _ in range(2)]  # 14 stream elements, 2 corrupt
  assert all(b['images'].shape == (6, 16, 16, 3) for b in batches)
  assert train.skipped >= 1 and train.metrics() == {
      'data/skipped_images': float(train.skipped)}
  assert train.position == 12 + train.skipped


def _write_balanced_train_folder(root, classes=10, per_class=10):
  pixels = np.zeros((4, 4, 3), np.uint8)
  encoded = tf.io.encode_png(pixels).numpy()
  for cls in range(classes):
    os.makedirs(root / 'train' / f'class{cls}')
    for i in range(per_class):
      (root / 'train' / f'class{cls}' / f'{i:03d}.png').write_bytes(encoded)


def _labels_of(source, split):
  return [int(l) for l in source.read(split, 0, 1)[0].map(
      lambda ex: ex['label']).as_numpy_iterator()]


def test_held_out_slice_of_a_train_only_folder_has_every_class(tmp_path):
  _write_balanced_train_folder(tmp_path)
  source = registry.open_source(f'folder:{tmp_path}')
  lines = []
  train_split, eval_split = resolve.pick_eval_split(source, 'train', lines.append)
  assert (train_split, eval_split) == ('train[:-10]', 'train[-10:]')
  assert 'class-stratified' in lines[0]
  held_out, trained = _labels_of(source, eval_split), _labels_of(source, train_split)
  assert sorted(held_out) == list(range(10))
  assert np.bincount(trained).tolist() == [9] * 10
  # The same sample on every opening (every process, every resume).
  again = registry.open_source(f'folder:{tmp_path}')
  assert [k.decode() for k in again.read(eval_split, 0, 1)[0].map(
      lambda ex: ex['key']).as_numpy_iterator()] == [
          k.decode() for k in source.read(eval_split, 0, 1)[0].map(
              lambda ex: ex['key']).as_numpy_iterator()]


@pytest.mark.parametrize('name', ['validation', 'val', 'valid', 'test'])
def test_folder_eval_split_names_users_have_are_taken(tmp_path, name):
  _write_balanced_train_folder(tmp_path, classes=2, per_class=2)
  os.makedirs(tmp_path / name / 'class0')
  assert resolve.pick_eval_split(registry.open_source(f'folder:{tmp_path}'),
                                'train', lambda _: None) == ('train', name)


def test_classification_eval_on_another_dataset_imagenet_v2(tmp_path):
  """An eval with `dataset`: ImageNet-v2's test split (mocked, 5 images)
  through the run's pp_eval, every image counted once; a dataset with other
  classes is refused, and one that is not prepared skipped with one line."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from tiny_jobs import tiny_config  # pylint: disable=g-import-not-at-top
  from vit_jax import evaluators  # pylint: disable=g-import-not-at-top
  from vit_jax.evaluators import classification  # pylint: disable=g-import-not-at-top
  from vit_jax.models import build_model  # pylint: disable=g-import-not-at-top
  from vit_jax.training.state import make_setup  # pylint: disable=g-import-not-at-top
  config = tiny_config({})
  config.update(num_classes=1000, data_dir=str(tmp_path), eval_batch_size=4,
                pp_eval='decode|resize_small(18)|central_crop(16)')
  lines = []
  context = evaluators.Context(config, None, lines.append)
  spec = ml_collections.ConfigDict(dict(
      type='classification', dataset='imagenet_v2', split='test', every_steps=1))
  with _mock(5):
    maker = classification.make('v2', spec, context)
    setup = make_setup(config)
    model = build_model(config.model, 1000)
    params = model.init(jax.random.key(0), np.zeros((1, 16, 16, 3)))['params']
    scalars = maker(setup)(params)
    assert scalars['eval/v2_examples'] == 5 and 0 <= scalars['eval/v2'] <= 1
    spec.dataset = 'cifar10'
    with pytest.raises(ConfigError, match=r"evals.v2.dataset='cifar10' has 10 "
                       r'classes, the model 1000'):
      classification.make('v2', spec, context)
  spec.dataset = 'imagenet_v2'
  assert classification.make('v2', spec, context) is None  # not prepared
  assert lines[-1].startswith('warning: evals.v2: skipped, ')


def _numbered_photos(count=48):
  """`count` random 8x8 images, each its own class (label = index)."""
  images = np.random.default_rng(0).integers(0, 256, (count, 8, 8, 3), np.uint8)
  return sources.ArraySource(images, np.arange(count), {'train': np.arange(count)},
                             num_classes=count, name='numbered')


@pytest.mark.parametrize('processes', [1, 2])
def test_repeated_augmentation_puts_each_image_k_times_in_each_global_batch(processes):
  """DeiT's repeated augmentation, k=3: every global batch holds 4 images 3
  times each, the copies augmented differently; an epoch of the stream
  (48 images) takes 3 times the steps; a resumed iterator continues with
  the same batches."""
  source, k, batch = _numbered_photos(), 3, 12
  def iterators():
    return [pipeline.TrainIterator(
        source, 'train', pp='pad(2)|random_crop(8)|flip_lr', batch_size=batch,
        seed=3, repeats=k, process_index=i, process_count=processes)
            for i in range(processes)]
  running, totals, distinct = iterators(), collections.Counter(), 0
  for step in range(48 * k // batch):
    parts = [next(it) for it in running]
    labels = np.concatenate([p['labels'] for p in parts])
    images = np.concatenate([p['images'] for p in parts])
    counts = collections.Counter(labels.tolist())
    assert sorted(counts.values()) == [k] * (batch // k), (step, counts)
    totals.update(counts)
    for label in counts:
      distinct += len({images[j].tobytes() for j in np.flatnonzero(labels == label)}) == k
    if step == 4:
      state = [it.position for it in running], running[0].next_batch
  assert totals == {i: k for i in range(48)}  # one pass: each image k times
  assert distinct >= 0.9 * 48  # copies differ (25 crops x 2 flips each)
  resumed = iterators()
  for it, position in zip(resumed, state[0]):
    it.position, it.next_batch = position, state[1]
  again = iterators()
  for _ in range(5):
    for it in again:
      next(it)
  for _ in range(3):
    for a, b in zip(resumed, again):
      np.testing.assert_array_equal(next(a)['images'], next(b)['images'])


def test_repeated_augmentation_groups_may_end_in_the_next_batch():
  """k=3 with 4 images a batch: a group of copies straddles two batches;
  over 3 batches each of 4 images has its 3 copies, and an iterator
  resumed in the middle of a group continues with the same copies."""
  def iterator():
    return pipeline.TrainIterator(_numbered_photos(), 'train', pp='flip_lr',
                                  batch_size=4, seed=1, repeats=3)
  running = iterator()
  labels = [next(running)['labels'].tolist() for _ in range(3)]
  assert labels[0][:3] == [labels[0][0]] * 3 and labels[0][3] == labels[1][0]
  assert sorted(collections.Counter(sum(labels, [])).values()) == [3] * 4
  resumed = iterator()
  resumed.position, resumed.next_batch = 4, 1  # after batch 0, mid-group
  np.testing.assert_array_equal(next(resumed)['labels'], labels[1])
  with pytest.raises(ConfigError, match=r'config.repeated_augmentation=0: '
                     r'expected a whole number >= 1'):
    pipeline.TrainIterator(_numbered_photos(), 'train', pp='', batch_size=8,
                           repeats=0)


@pytest.mark.parametrize('on_corrupt', ['stop', 'skip'])
def test_image_deleted_during_training_is_named_or_skipped(tmp_path, on_corrupt):
  """A photo removed after the run has listed the folder: with stop, one
  error naming the file (like an image that does not decode); with skip,
  counted once per pass over it."""
  from photo_folders import make_photo_folder  # pylint: disable=g-import-not-at-top
  root = make_photo_folder(tmp_path / 'photos', train_per_class=4, test_per_class=1)
  train = pipeline.TrainIterator(sources.FolderSource(str(root)), 'train',
                                 pp='decode|resize(16)', batch_size=4, seed=0,
                                 on_corrupt=on_corrupt)
  next(train)
  deleted = root / 'train' / 'china_left' / '1.jpg'
  deleted.unlink()
  if on_corrupt == 'stop':
    with pytest.raises(pipeline.CorruptImageError,
                       match=f'cannot read an image of the dataset: {deleted}; '
                             f'No such file or directory. Remove or fix the file'):
      for _ in range(12):
        next(train)
  else:
    for _ in range(11):  # 12 batches of 4: three passes over the 16 images
      next(train)
    assert train.metrics() == {'data/skipped_images': 3.0}
