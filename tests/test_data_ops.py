"""Preprocessing ops: parsing, geometry, value range, RandAugment, mixing."""

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
import pytest
import tensorflow as tf

from vit_jax.data import ops, randaugment

SEED = tf.constant([1, 2], tf.int64)


def _jpeg(h=40, w=60):
  rng = np.random.default_rng(0)
  return tf.io.encode_jpeg(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _run(spec, image, seed=SEED):
  return ops.Preprocess(spec).example_fn({'image': image, 'label': 3}, seed)


def test_value_range_is_added_and_maps_0_255_to_minus1_1():
  image = tf.constant([[[0, 255, 51]]], tf.uint8)
  out = _run('', image)['image'].numpy()
  np.testing.assert_allclose(out, [[[-1.0, 1.0, -0.6]]], atol=1e-6)
  out = _run('value_range(0, 1)', image)['image'].numpy()
  np.testing.assert_allclose(out, [[[0.0, 1.0, 0.2]]], atol=1e-6)


@pytest.mark.parametrize('spec,shape', [
    ('decode', (40, 60, 3)),
    ('decode_inception_crop(24)', (24, 24, 3)),
    ('decode|inception_crop((16, 20))', (16, 20, 3)),
    ('decode|resize_small(20)', (20, 30, 3)),
    ('decode|resize_small(20)|central_crop(20)', (20, 20, 3)),
    ('decode|resize(10)', (10, 10, 3)),
    ('decode|pad(2)|random_crop(40)', (40, 40, 3)),
    ('decode|resize(32)|flip_lr|randaug(3,15)', (32, 32, 3)),
])
def test_op_output_shapes(spec, shape):
  image = _run(spec, _jpeg())['image']
  assert tuple(image.shape) == shape and image.dtype == tf.float32
  assert -1 <= float(tf.reduce_min(image)) and float(tf.reduce_max(image)) <= 1


def test_fused_inception_crop_matches_decode_then_crop():
  """Decoding only the window gives the pixels of cropping the full image."""
  jpeg = _jpeg(64, 64)
  # The crop box depends on the image shape and the seed alone.
  fused = ops.decode_inception_crop(32)({'image': jpeg}, SEED)['image']
  decoded = tf.io.decode_jpeg(jpeg, channels=3)
  plain = ops.inception_crop(32)({'image': decoded}, SEED)['image']
  fused, plain = fused.numpy() / 127.5, plain.numpy() / 127.5
  assert np.abs(fused - plain).mean() < 0.02


def test_inception_crop_area_range_and_determinism():
  image = tf.zeros([100, 100, 3], tf.uint8)
  areas = []
  for i in range(50):
    seed = tf.constant([7, i], tf.int64)
    begin, size = ops._crop_box(tf.shape(image), seed, 5, 100)
    areas.append(int(size[0]) * int(size[1]) / 100**2)
    again = ops._crop_box(tf.shape(image), seed, 5, 100)
    assert again[0].numpy().tolist() == begin.numpy().tolist()
  assert min(areas) >= 0.05 * 0.95 and max(areas) <= 1.0
  assert len(set(areas)) > 30


def test_flip_lr_flips_about_half():
  image = tf.constant(np.arange(12).reshape(1, 4, 3) * 20, tf.uint8)
  flips = 0
  for i in range(40):
    out = _run('flip_lr', image, tf.constant([0, i], tf.int64))['image'].numpy()
    reference = _run('', image)['image'].numpy()
    flips += not np.array_equal(out, reference)
    assert np.array_equal(out, reference) or np.array_equal(out, reference[:, ::-1])
  assert 10 < flips < 30


def test_op_string_errors_name_the_problem():
  with pytest.raises(ValueError, match=r"unknown op 'crop_center'.*central_crop"):
    ops.Preprocess('decode|crop_center(224)')
  with pytest.raises(ValueError, match=r"op 'flip_lr' follows a batch op"):
    ops.Preprocess('decode|mixup(0.2)|flip_lr')
  with pytest.raises(ValueError, match=r"bad arguments in op 'resize\(2 2\)'"):
    ops.Preprocess('resize(2 2)')


def _digit_image():
  rng = np.random.default_rng(1)
  return tf.constant(rng.integers(0, 256, (12, 10, 3)), tf.uint8)


@pytest.mark.parametrize('op', randaugment.OPS, ids=lambda op: op.__name__)
def test_every_randaugment_op_keeps_shape_and_dtype(op):
  image = _digit_image()
  for magnitude in (0, 5, 10):
    out = op(image, SEED, magnitude)
    assert out.shape == image.shape and out.dtype == tf.uint8


def test_randaugment_op_values():
  image = _digit_image()
  pixels = image.numpy().astype(int)
  np.testing.assert_array_equal(randaugment.invert(image, SEED, 5), 255 - pixels)
  np.testing.assert_array_equal(randaugment.solarize(image, SEED, 10), 255 - pixels)
  np.testing.assert_array_equal(randaugment.solarize(image, SEED, 0), pixels)
  np.testing.assert_array_equal(randaugment.posterize(image, SEED, 10),
                                pixels & 0xF0)
  np.testing.assert_array_equal(randaugment.posterize(image, SEED, 0), pixels)
  for op in (randaugment.rotate, randaugment.shear_x, randaugment.translate_y,
             randaugment.color, randaugment.contrast, randaugment.sharpness):
    np.testing.assert_array_equal(op(image, SEED, 0), pixels, err_msg=op.__name__)


def test_randaugment_colour_ops_match_pil():
  image = _digit_image()
  pil = Image.fromarray(image.numpy())
  np.testing.assert_array_equal(randaugment.equalize(image, SEED, 5),
                                np.asarray(ImageOps.equalize(pil)))
  np.testing.assert_array_equal(randaugment.auto_contrast(image, SEED, 5),
                                np.asarray(ImageOps.autocontrast(pil)))
  for op, enhancer in ((randaugment.color, ImageEnhance.Color),
                       (randaugment.contrast, ImageEnhance.Contrast),
                       (randaugment.brightness, ImageEnhance.Brightness),
                       (randaugment.sharpness, ImageEnhance.Sharpness)):
    factor = float(randaugment._enhance_factor(SEED, 7))  # pylint: disable=protected-access
    expected = np.asarray(enhancer(pil).enhance(factor)).astype(int)
    # PIL rounds its intermediate grey image and mean; one level of slack.
    assert np.abs(op(image, SEED, 7).numpy() - expected).max() <= 2, op.__name__


def test_rotate_by_180_degrees_is_a_flip_of_both_axes():
  image = tf.constant(np.arange(5 * 5 * 3).reshape(5, 5, 3), tf.uint8)
  angle = tf.constant(np.pi)
  transform = randaugment._affine  # pylint: disable=protected-access
  cos, sin = tf.cos(angle), tf.sin(angle)
  c = 2.0
  out = transform(image, tf.stack([cos, -sin, c - cos * c + sin * c,
                                   sin, cos, c - sin * c - cos * c, 0., 0.]))
  np.testing.assert_array_equal(out, image.numpy()[::-1, ::-1])


def test_randaugment_is_a_function_of_the_seed():
  image = _digit_image()
  a = randaugment.randaugment(image, SEED, num_layers=2, magnitude=10)
  b = randaugment.randaugment(image, SEED, num_layers=2, magnitude=10)
  np.testing.assert_array_equal(a, b)
  others = [randaugment.randaugment(image, tf.constant([1, i], tf.int64),
                                    num_layers=2, magnitude=10).numpy()
            for i in range(3, 13)]
  assert len({o.tobytes() for o in others}) > 5


def _batch():
  rng = np.random.default_rng(0)
  images = tf.constant(rng.uniform(-1, 1, (8, 6, 6, 3)), tf.float32)
  labels = tf.one_hot(np.arange(8) % 4, 4)
  return {'image': images, 'label': labels}


def test_mixup_is_a_convex_combination_with_matching_labels():
  batch = _batch()
  out = ops.mixup(0.4)(batch, SEED)
  labels = out['label'].numpy()
  np.testing.assert_allclose(labels.sum(-1), 1.0, rtol=1e-6)
  lam = labels[0, 0]  # example 0 is class 0, its neighbour (7) class 3
  assert 0 < lam < 1 and np.isclose(labels[0, 3], 1 - lam)
  expected = lam * batch['image'][0] + (1 - lam) * batch['image'][7]
  np.testing.assert_allclose(out['image'][0], expected, atol=1e-6)


def test_cutmix_label_weight_is_the_kept_area():
  batch = _batch()
  out = ops.cutmix(1.0)(batch, SEED)
  replaced = (out['image'].numpy()[0] != batch['image'].numpy()[0]).any(-1)
  kept = 1 - replaced.mean()
  labels = out['label'].numpy()
  np.testing.assert_allclose(labels[0, 0], kept, atol=1e-6)
  np.testing.assert_allclose(labels.sum(-1), 1.0, rtol=1e-6)


def test_two_batch_ops_choose_one_per_batch():
  preprocess = ops.Preprocess('mixup(0.5)|cutmix(1.0)')
  assert preprocess.needs_onehot and len(preprocess.batch_ops) == 2
  results = set()
  for i in range(12):
    out = preprocess.batch_fn(_batch(), tf.constant([0, i], tf.int64))
    changed = (out['image'].numpy() != _batch()['image'].numpy()).any(-1)
    results.add('cutmix' if not changed.all() else 'mixup')
  assert results == {'mixup', 'cutmix'}


def _published_random_erasing(rng, height, width, probability=0.25,
                              scale=(0.02, 1 / 3), ratio=(0.3, 3.3), attempts=10):
  """Random erasing as published (Zhong et al. 2020, Alg. 1) and as timm's
  RandomErasing draws it: (h, w) of the erased box, or None."""
  if rng.uniform() >= probability:
    return None
  for _ in range(attempts):
    area = rng.uniform(*scale) * height * width
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    h, w = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
    if h < height and w < width:
      return h, w
  return None


def test_random_erasing_draws_the_published_boxes():
  """1,000 draws on a 48x64 image against the published algorithm's
  distribution (200,000 draws): how often a box is erased, its area
  fraction and its aspect, and that each box is one filled rectangle."""
  height, width = 48, 64
  image = tf.zeros([height, width, 3], tf.uint8)
  boxes = []
  for i in range(1000):
    out = _run('value_range|random_erase(0.25)', image,
               tf.constant([3, i], tf.int64))['image'].numpy()
    erased = np.any(out != -1.0, axis=-1)
    if erased.any():
      rows, cols = np.flatnonzero(erased.any(1)), np.flatnonzero(erased.any(0))
      h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
      assert erased.sum() == h * w  # one rectangle, every pixel refilled
      boxes.append((h, w))
    else:
      boxes.append(None)
  rng = np.random.default_rng(0)
  reference = [_published_random_erasing(rng, height, width) for _ in range(200_000)]

  def stats(draws):
    kept = [b for b in draws if b is not None]
    area = np.array([h * w / (height * width) for h, w in kept])
    log_aspect = np.array([np.log(h / w) for h, w in kept])
    return len(kept) / len(draws), area, log_aspect
  rate, area, log_aspect = stats(boxes)
  ref_rate, ref_area, ref_log_aspect = stats(reference)
  assert abs(rate - ref_rate) < 3 * np.sqrt(ref_rate * (1 - ref_rate) / 1000)
  assert abs(area.mean() - ref_area.mean()) < 3 * ref_area.std() / np.sqrt(len(area))
  assert abs(log_aspect.mean() - ref_log_aspect.mean()) < (
      3 * ref_log_aspect.std() / np.sqrt(len(log_aspect)))
  assert area.min() >= ref_area.min() - 1e-9 and area.max() <= ref_area.max() + 1e-9


def test_integer_steps_of_posterize_and_solarize_follow_the_magnitude_exactly():
  """The step each op takes at magnitude m, as numbers (Python's int and
  round) or as a tensor (magnitude noise): the same pixels for m in 0..30."""
  pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
  image = tf.constant(pixels)
  for m in range(31):
    dropped = min(int(round(m / 10 * 4)), 7)
    threshold = max(256 - int(m / 10 * 256), 0)
    added = np.clip(pixels.astype(int) + int(m / 10 * 110), 0, 255)
    expected = {
        randaugment.posterize: (pixels >> dropped) << dropped,
        randaugment.solarize: np.where(pixels >= threshold, 255 - pixels, pixels),
        randaugment.solarize_add: np.where(pixels < 128, added, pixels)}
    for op, want in expected.items():
      for magnitude in (m, tf.constant(float(m))):
        np.testing.assert_array_equal(op(image, SEED, magnitude), want,
                                      err_msg=f'{op.__name__} m={m}')


def test_magnitude_noise_is_timms_clipped_normal():
  """1,000 draws of DeiT's rand-m9-mstd0.5: N(9, 0.5^2) clipped to [0, 10]
  (timm's RandAugment draws random.gauss(m, std) per op, then clips to its
  reference strength 10)."""
  draws = np.array([float(randaugment.layer_magnitude(
      tf.constant([7, i], tf.int64), 9, 0.5)) for i in range(1000)])
  assert draws.min() >= 0 and draws.max() == 10
  # P(N(9, 0.25) > 10) = 1 - Phi(2) = 0.02275: about 23 of 1,000 at 10.
  assert 10 <= np.sum(draws == 10) <= 40
  unclipped = draws[draws < 10]
  assert abs(unclipped.mean() - 8.972) < 0.05  # E[X | X < 10] = 9 - 0.5 phi(2) / Phi(2)
  assert abs(unclipped.std() - 0.471) < 0.04  # its standard deviation
  assert randaugment.layer_magnitude(tf.constant([7, 0], tf.int64), 9, 0) == 9
  # Above the reference strength (AugReg's 15, 20) the bound is the magnitude.
  assert max(float(randaugment.layer_magnitude(tf.constant([1, i], tf.int64), 20, 2))
             for i in range(200)) == 20


def test_randaug_with_magnitude_noise_in_an_op_string():
  image = _digit_image()
  preprocess = ops.Preprocess('randaug(2,9,0.5)')
  outputs = {preprocess.example_fn({'image': image, 'label': tf.constant(0)},
                                   tf.constant([0, i], tf.int64))['image'].numpy().tobytes()
             for i in range(20)}
  assert len(outputs) > 10
  with pytest.raises(ValueError, match='randaug magnitude noise -1 is negative'):
    randaugment.randaugment(image, SEED, magnitude_std=-1)
