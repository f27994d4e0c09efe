"""The Grain path in one process: global batches that do not depend on the
process count (batch ops included), evaluation that counts every example
once, worker processes, unreadable images, and the ops without TensorFlow."""

import io

import numpy as np
import pytest
from PIL import Image

from vit_jax.data import arrayrecord, grain_pipeline, image_ops, ops
from vit_jax.data.registry import CorruptImageError

CLASSES = 5


def _png(value: int, size=(12, 10)) -> bytes:
  out = io.BytesIO()
  Image.fromarray(np.full((*size, 3), value, np.uint8)).save(out, format='PNG')
  return out.getvalue()


def _examples(count=37, corrupt=()):
  """Example i is a flat image of grey level 3 i, label i % CLASSES."""
  records = list(
      arrayrecord.encode_record(b'broken' if i in corrupt else _png(3 * i),
                                i % CLASSES, f'image{i}.png')
      for i in range(count))
  return grain_pipeline.Examples(records, 0, count, arrayrecord.decode_record,
                                 num_classes=CLASSES, multi_label=False,
                                 name='test/train')


def _ids(images):
  """Grey level back to the example number (flat images, value_range)."""
  return np.round((images[:, 0, 0, 0] + 1) / 2 * 255 / 3).astype(int).tolist()


def _global_batches(process_count, pp, steps=4, batch_size=12, **options):
  parts = [grain_pipeline.TrainIterator(
      _examples(), pp=pp, batch_size=batch_size, seed=3, threads=2,
      process_index=i, process_count=process_count, **options)
           for i in range(process_count)]
  batches = []
  for _ in range(steps):
    local = [next(part) for part in parts]
    batches.append({k: np.concatenate([b[k] for b in local]) for k in local[0]})
  return batches


@pytest.mark.parametrize('pp', ['resize(8)|flip_lr',
                                'decode_inception_crop(8)|flip_lr|randaug(2,15)',
                                'resize(8)|mixup(0.5)|cutmix(1.0)'])
def test_global_batches_do_not_depend_on_the_process_count(pp):
  one = _global_batches(1, pp)
  for count in (2, 3, 4):
    for a, b in zip(one, _global_batches(count, pp)):
      np.testing.assert_array_equal(a['images'], b['images'])
      np.testing.assert_array_equal(a['labels'], b['labels'])


def test_epochs_are_permutations_reshuffled_each_epoch():
  """37 examples, batches of 12: every example once per epoch, another
  order the next epoch, the same order for the same seed."""
  stream = sum((_ids(b['images']) for b in _global_batches(1, 'resize(8)', steps=7)), [])
  first, second = stream[:37], stream[37:74]
  assert sorted(first) == sorted(second) == list(range(37))
  assert first != second
  again = sum((_ids(b['images']) for b in _global_batches(2, 'resize(8)', steps=7)), [])
  assert again == stream


def test_mixup_mixes_across_the_process_boundary():
  """With mixup at weight 1/2 the first example of process 1's part is
  blended with the last of process 0's, as on one process."""
  plain = _global_batches(2, 'resize(8)', steps=1)[0]
  mixed = _global_batches(2, 'resize(8)|mixup(1e9)', steps=1)[0]
  expected = (plain['images'] + np.roll(plain['images'], 1, 0)) / 2
  np.testing.assert_allclose(mixed['images'], expected, atol=0.02)
  onehot = np.eye(CLASSES)[plain['labels']]
  np.testing.assert_allclose(mixed['labels'],
                             (onehot + np.roll(onehot, 1, 0)) / 2, atol=0.02)


def test_repeated_augmentation_puts_copies_in_a_row():
  stream = _ids(_global_batches(1, 'resize(8)', steps=1, repeats=3)[0]['images'])
  assert stream[0::3] == stream[1::3] == stream[2::3]
  assert len(set(stream)) == 4


def test_resumed_iterator_continues_the_stream():
  straight = grain_pipeline.TrainIterator(_examples(), pp='resize(8)|flip_lr',
                                          batch_size=12, seed=3, threads=2)
  batches = [next(straight)['images'] for _ in range(5)]
  state = straight.get_state()
  assert state == {'next_batch': 5, 'order': 'global', 'skipped': 0}
  resumed = grain_pipeline.TrainIterator(_examples(), pp='resize(8)|flip_lr',
                                         batch_size=12, seed=3, threads=1)
  resumed.set_state({'next_batch': 3, 'order': 'global', 'skipped': 0})
  np.testing.assert_array_equal(next(resumed)['images'], batches[3])


def test_worker_processes_give_the_same_batches():
  pp = 'decode_inception_crop(8)|flip_lr|mixup(0.2)'
  threads = _global_batches(1, pp, steps=3)
  workers = _global_batches(1, pp, steps=3, workers=2)
  for a, b in zip(threads, workers):
    np.testing.assert_array_equal(a['images'], b['images'])


def test_eval_counts_every_example_once_on_any_process_count():
  for count in (1, 2, 3):
    seen = []
    for i in range(count):
      passes = grain_pipeline.eval_batches(
          _examples(), pp='resize(8)', batch_size=6 * count,
          process_index=i, process_count=count, threads=1)
      batches = list(passes())
      assert len(batches) == -(-(-(-37 // count)) // 6)
      for batch in batches:
        seen += [n for n, m in zip(_ids(batch['images']), batch['mask']) if m]
    assert sorted(seen) == list(range(37)), count


def test_unreadable_image_stops_with_its_name_or_is_stood_in_for():
  with pytest.raises(CorruptImageError, match=r"'image4.png' \(example 4 of "
                     r"test/train\).*on_corrupt=skip"):
    passes = grain_pipeline.eval_batches(_examples(corrupt={4}), pp='resize(8)',
                                         batch_size=8)
    list(passes())
  skip = grain_pipeline.TrainIterator(_examples(corrupt={4}), pp='resize(8)',
                                      batch_size=37, seed=0, on_corrupt='skip')
  ids = _ids(next(skip)['images'])
  assert 4 not in ids and sorted(set(ids)) == [i for i in range(37) if i != 4]
  assert skip.metrics() == {'data/skipped_images': 1.0}
  masked = list(grain_pipeline.eval_batches(
      _examples(corrupt={4}), pp='resize(8)', batch_size=8, on_corrupt='skip')())
  assert sum(b['mask'].sum() for b in masked) == 36


def test_both_pipelines_know_the_same_ops_and_errors():
  assert sorted(image_ops.OPS.example_ops) == sorted(ops.OPS.example_ops)
  assert sorted(image_ops.OPS.batch_ops) == sorted(ops.OPS.batch_ops)
  for bad in ('nosuch(3)', 'mixup(0.2)|flip_lr', 'resize(224', 'randaug(2,40)'):
    with pytest.raises(ValueError) as numpy_error:
      image_ops.Preprocess(bad)
    with pytest.raises(ValueError) as tf_error:
      ops.Preprocess(bad).example_fn(
          {'image': np.zeros((4, 4, 3), np.uint8), 'label': 0},
          np.array([0, 0], np.int64))
    assert str(numpy_error.value) == str(tf_error.value)


def test_inception_crop_statistics_match_the_tf_op():
  """The crop boxes' area fractions: the same distribution as TensorFlow's
  sample_distorted_bounding_box with the same ranges."""
  rng = np.random.default_rng(0)
  areas = [np.prod(image_ops.crop_box(300, 400, rng, 8, 100)[2:]) / 120_000
           for _ in range(4000)]
  tf = pytest.importorskip('tensorflow')
  tf_areas = []
  for i in range(1000):
    _, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        [300, 400, 3], tf.zeros([0, 0, 4]), seed=[i, 0], area_range=(0.08, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3), min_object_covered=0.0,
        use_image_if_no_bounding_boxes=True, max_attempts=10)
    tf_areas.append(int(size[0]) * int(size[1]) / 120_000)
  # A height uniform in its range (TensorFlow's draw), not an area uniform
  # in its range, puts the mean area near 0.37 instead of 0.45.
  for statistic in (np.mean, np.std, np.median):
    assert abs(statistic(areas) - statistic(tf_areas)) < 0.02, statistic
