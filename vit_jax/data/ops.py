"""Preprocessing ops selected by an op string.

  'decode_inception_crop(224)|flip_lr|randaug(2,15)|mixup(0.2)'
  'decode_inception_crop(224)|flip_lr|randaug(2,9)|value_range|random_erase(0.25)'

Per-example ops work on {'image': ..., 'label': ...} dicts with uint8 images
(encoded bytes before a decode op) and take a per-example stateless seed, so
an example's augmentation depends only on (seed, its position in the stream):
a resumed run sees exactly the pixels an uninterrupted one would. Images
leave the per-example ops as float32 in [-1, 1] (an explicit `value_range`
or, if absent, one added at the end). Batch ops (mixup, cutmix) come last
and act on whole batches of float images and one-hot labels.
"""


from vit_jax.data import op_strings, randaugment
from vit_jax.runtime.native_logs import import_tensorflow

tf = import_tensorflow()

OPS = op_strings.OpRegistry()


def _on_image(transform):
  """An op that maps only the image."""
  def op(example, seed):
    image = transform(example['image'], seed)
    if image.dtype != tf.string:
      image.set_shape([None, None, 3])  # ops keep RGB; tf.slice loses it
    return {**example, 'image': image}
  return op


def _decode_full(data: tf.Tensor) -> tf.Tensor:
  if data.dtype != tf.string:  # an in-memory source with decoded pixels
    return data
  image = tf.io.decode_image(data, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _crop_box(shape, seed, area_min, area_max):
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, tf.zeros([0, 0, 4], tf.float32), seed=seed,
      area_range=(area_min / 100, area_max / 100),
      aspect_ratio_range=(3 / 4, 4 / 3), min_object_covered=0.0,
      use_image_if_no_bounding_boxes=True, max_attempts=10)
  return begin, size


@OPS.example
def decode():
  return _on_image(lambda data, seed: _decode_full(data))


@OPS.example
def inception_crop(size, area_min=5, area_max=100):
  """Random crop of 5-100% of the area, aspect 3/4-4/3, resized to `size`."""
  def crop(image, seed):
    image = _decode_full(image)
    begin, box = _crop_box(tf.shape(image), seed, area_min, area_max)
    crop = tf.slice(image, begin, box)
    return randaugment.to_uint8(tf.image.resize(crop, op_strings.hw(size)))
  return _on_image(crop)


@OPS.example
def decode_inception_crop(size, area_min=5, area_max=100):
  """inception_crop that decodes only the cropped window of a JPEG: the
  costliest op of ImageNet training made cheaper. Other formats decode fully."""
  def crop(data, seed):
    if data.dtype != tf.string:
      return inception_crop(size, area_min, area_max)({'image': data}, seed)['image']

    def jpeg():
      begin, box = _crop_box(tf.image.extract_jpeg_shape(data), seed,
                             area_min, area_max)
      window = tf.stack([begin[0], begin[1], box[0], box[1]])
      return tf.image.decode_and_crop_jpeg(data, window, channels=3)

    def other():
      image = _decode_full(data)
      begin, box = _crop_box(tf.shape(image), seed, area_min, area_max)
      return tf.slice(image, begin, box)

    cropped = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    cropped.set_shape([None, None, 3])
    return randaugment.to_uint8(tf.image.resize(cropped, op_strings.hw(size)))
  return _on_image(crop)


@OPS.example
def resize(size, method='bilinear'):
  return _on_image(lambda image, seed: randaugment.to_uint8(
      tf.image.resize(_decode_full(image), op_strings.hw(size), method=method)))


@OPS.example
def resize_small(size, method='bilinear'):
  """Resizes so that the shorter side is `size`, keeping the aspect ratio."""
  def op(image, seed):
    image = _decode_full(image)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    scale = tf.cast(size, tf.float32) / tf.cast(tf.minimum(h, w), tf.float32)
    new = tf.cast(tf.round(tf.cast(tf.stack([h, w]), tf.float32) * scale), tf.int32)
    return randaugment.to_uint8(tf.image.resize(image, tf.maximum(new, size), method=method))
  return _on_image(op)


@OPS.example
def central_crop(size):
  def op(image, seed):
    image = _decode_full(image)
    ch, cw = op_strings.hw(size)
    top = (tf.shape(image)[0] - ch) // 2
    left = (tf.shape(image)[1] - cw) // 2
    return tf.image.crop_to_bounding_box(image, top, left, ch, cw)
  return _on_image(op)


@OPS.example
def random_crop(size):
  def op(image, seed):
    image = _decode_full(image)
    return tf.image.stateless_random_crop(image, (*op_strings.hw(size), 3), seed=seed)
  return _on_image(op)


@OPS.example
def pad(pixels, value=0):
  """Pads every side (e.g. before random_crop, for small translations)."""
  def op(image, seed):
    paddings = [[pixels, pixels], [pixels, pixels], [0, 0]]
    return tf.pad(_decode_full(image), paddings, constant_values=value)
  return _on_image(op)


@OPS.example
def flip_lr():
  return _on_image(lambda image, seed: tf.image.stateless_random_flip_left_right(
      _decode_full(image), seed))


@OPS.example
def randaug(num_layers=2, magnitude=10, magnitude_std=0):
  """RandAugment: `num_layers` ops drawn uniformly, each at `magnitude` of
  10, or with `magnitude_std` (DeiT: randaug(2,9,0.5)) at a magnitude drawn
  per op around it."""
  return _on_image(lambda image, seed: randaugment.randaugment(
      _decode_full(image), seed, num_layers=num_layers, magnitude=magnitude,
      magnitude_std=magnitude_std))


@OPS.example
def value_range(low=-1.0, high=1.0):
  def op(image, seed):
    image = tf.cast(_decode_full(image), tf.float32) / 255.0
    return image * (high - low) + low
  return _on_image(op)


@OPS.example
def random_erase(probability=0.25, area_min=0.02, area_max=1 / 3,
                 aspect_min=0.3, aspect_max=3.3, attempts=10):
  """Random erasing (Zhong et al. 2020) as DeiT trains with it (timm's
  RandomErasing, 'pixel' mode, one box): with `probability`, a box of
  uniform(area_min, area_max) of the image's area and log-uniform aspect
  (height / width) in [aspect_min, aspect_max] is drawn, up to `attempts`
  times until it fits, and filled with per-pixel standard-normal noise (in
  the [-1, 1] pixels after value_range; uniform bytes on uint8 images)."""
  def op(image, seed):
    image = _decode_full(image)
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    area = tf.cast(height * width, tf.float32)
    target = area * tf.random.stateless_uniform([attempts], seeds[0], area_min, area_max)
    log_aspect = tf.random.stateless_uniform(
        [attempts], seeds[1], tf.math.log(float(aspect_min)), tf.math.log(float(aspect_max)))
    aspect = tf.exp(log_aspect)
    box_h = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    box_w = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    fits = (box_h < height) & (box_w < width)
    first = tf.argmax(tf.cast(fits, tf.int32))
    h, w = box_h[first], box_w[first]
    corner = tf.random.stateless_uniform([2], seeds[2], 0.0, 1.0)
    top = tf.cast(corner[0] * tf.cast(height - h + 1, tf.float32), tf.int32)
    left = tf.cast(corner[1] * tf.cast(width - w + 1, tf.float32), tf.int32)
    erase = tf.logical_and(
        tf.reduce_any(fits),
        tf.random.stateless_uniform([], seeds[3]) < probability)
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    inside = erase & (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    if image.dtype.is_floating:
      noise = tf.random.stateless_normal(shape, seeds[4], dtype=image.dtype)
    else:
      noise = tf.cast(tf.random.stateless_uniform(
          shape, seeds[4], 0, 256, dtype=tf.int32), image.dtype)
    return tf.where(inside[:, :, None], noise, image)
  return _on_image(op)


def _mix_labels(labels, lam):
  return lam * labels + (1 - lam) * tf.roll(labels, 1, axis=0)


def _beta(seed, alpha):
  seeds = tf.random.experimental.stateless_split(seed, 2)
  a = tf.random.stateless_gamma([], seeds[0], alpha)
  b = tf.random.stateless_gamma([], seeds[1], alpha)
  return a / (a + b)


@OPS.batch
def mixup(alpha=0.2):
  """Each example blended with its neighbour in the batch, weight ~ Beta."""
  def op(batch, seed):
    lam = _beta(seed, alpha)
    images = lam * batch['image'] + (1 - lam) * tf.roll(batch['image'], 1, 0)
    return {**batch, 'image': images, 'label': _mix_labels(batch['label'], lam)}
  return op


@OPS.batch
def cutmix(alpha=1.0):
  """A box from the neighbouring example pasted in; labels by area."""
  def op(batch, seed):
    box_seed, lam_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    lam = _beta(lam_seed, alpha)
    shape = tf.shape(batch['image'])
    h, w = shape[1], shape[2]
    ratio = tf.sqrt(1 - lam)
    bh = tf.cast(tf.cast(h, tf.float32) * ratio, tf.int32)
    bw = tf.cast(tf.cast(w, tf.float32) * ratio, tf.int32)
    center = tf.random.stateless_uniform([2], box_seed, 0, 1)
    cy = tf.cast(center[0] * tf.cast(h, tf.float32), tf.int32)
    cx = tf.cast(center[1] * tf.cast(w, tf.float32), tf.int32)
    top, bottom = tf.maximum(cy - bh // 2, 0), tf.minimum(cy + bh // 2, h)
    left, right = tf.maximum(cx - bw // 2, 0), tf.minimum(cx + bw // 2, w)
    rows = tf.range(h)[:, None]
    cols = tf.range(w)[None, :]
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    inside = tf.cast(inside, tf.float32)[None, :, :, None]
    images = (1 - inside) * batch['image'] + inside * tf.roll(batch['image'], 1, 0)
    kept = 1 - tf.reduce_mean(inside)
    return {**batch, 'image': images, 'label': _mix_labels(batch['label'], kept)}
  return op


class Preprocess:
  """A parsed op string: `example_fn(example, seed)` and `batch_fn(batch,
  seed)` (None without batch ops). `needs_onehot` says if labels must be
  one-hot before batching (batch ops mix labels)."""

  def __init__(self, spec: str):
    self.spec = spec
    self.example_ops, self.batch_ops, has_range = op_strings.split_ops(spec, OPS)
    if not has_range:
      self.example_ops.append(value_range())
    self.needs_onehot = bool(self.batch_ops)

  def example_fn(self, example: dict, seed: tf.Tensor) -> dict:
    for i, op in enumerate(self.example_ops):
      example = op(example, tf.random.experimental.stateless_fold_in(seed, i))
    return example

  def batch_fn(self, batch: dict, seed: tf.Tensor) -> dict:
    """With several batch ops, each batch uses one, chosen at random."""
    if len(self.batch_ops) == 1:
      return self.batch_ops[0](batch, seed)
    choice_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    choice = tf.random.stateless_uniform([], choice_seed, 0, len(self.batch_ops),
                                         dtype=tf.int32)
    return tf.switch_case(choice, [lambda op=op: op(batch, op_seed)
                                   for op in self.batch_ops])
