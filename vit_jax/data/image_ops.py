"""The ops of the op strings with Pillow and NumPy, for the Grain input
path (no TensorFlow): the same names, arguments and order rules as the
tf.data ops (vit_jax/data/ops.py).

Per-example ops take {'image': ..., 'label': ...} and the example's NumPy
generator, seeded by (seed, the example's place in the global stream), so an example's pixels depend on the config and its place only,
not on the process or worker that computes them. Images travel as encoded
bytes, then Pillow images, and leave as float32 arrays in [-1, 1] (a
`value_range` is added at the end when the string has none). Batch ops
(mixup, cutmix) come last and act on whole batches.

Decoding and resizing use OpenCV (libjpeg-turbo, SIMD resizes): its
bilinear resize, like TensorFlow's default, does not antialias, so the
pixels stay close to the tf.data path's; the colour and geometry ops of
RandAugment use Pillow. EXIF orientation is ignored, as TensorFlow ignores
it. Unlike tf.data's decode_and_crop_jpeg, the whole JPEG is decoded.
"""

import io
import math

import cv2
import numpy as np
from PIL import Image

from vit_jax.data import op_strings, randaugment_pil

# Parallelism comes from Grain's threads and workers; OpenCV's own thread
# pool would oversubscribe the cores.
cv2.setNumThreads(1)

# Image files, by suffix, that folder sources and predict read.
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')

OPS = op_strings.OpRegistry()
_METHODS = {'bilinear': cv2.INTER_LINEAR, 'bicubic': cv2.INTER_CUBIC,
            'nearest': cv2.INTER_NEAREST, 'area': cv2.INTER_AREA,
            'lanczos3': cv2.INTER_LANCZOS4}
_DECODE_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION


def _method(name: str):
  if name not in _METHODS:
    raise ValueError(f'unknown resize method {name!r}; expected one of '
                     f'{sorted(_METHODS)}.')
  return _METHODS[name]


def decode_image(data: bytes) -> np.ndarray:
  """Encoded bytes -> uint8 RGB pixels (height, width, 3); Pillow decodes
  what OpenCV cannot. Raises ValueError for bytes that are no image."""
  pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _DECODE_FLAGS)
  if pixels is None:
    try:
      with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert('RGB'))
    except Exception:  # pylint: disable=broad-except
      raise ValueError('not an image OpenCV or Pillow can decode') from None
  return pixels


def _array(image) -> np.ndarray:
  """Bytes, a Pillow image or pixels -> pixels."""
  if isinstance(image, bytes):
    return decode_image(image)
  if isinstance(image, Image.Image):
    return np.asarray(image if image.mode == 'RGB' else image.convert('RGB'))
  return image


def _pil(image) -> Image.Image:
  """Bytes, uint8 pixels or a Pillow image -> an RGB Pillow image."""
  if isinstance(image, Image.Image):
    return image if image.mode == 'RGB' else image.convert('RGB')
  pixels = _array(image)
  if pixels.dtype != np.uint8:
    raise ValueError(f'this op needs uint8 pixels, got {pixels.dtype}: put '
                     f'value_range after it.')
  return Image.fromarray(np.ascontiguousarray(pixels))


def _resized(pixels: np.ndarray, height: int, width: int, method=cv2.INTER_LINEAR):
  return cv2.resize(pixels, (width, height), interpolation=method)


def _on_image(transform):
  """An op that maps only the image."""
  def op(example, rng):
    return {**example, 'image': transform(example['image'], rng)}
  return op


def crop_box(height: int, width: int, rng, area_min=5, area_max=100):
  """(left, top, width, height) of an inception crop, drawn as TensorFlow's
  sample_distorted_bounding_box draws it (the tf.data op's crop), so both
  paths crop with the same distribution: up to 10 attempts, each an aspect
  ratio (width / height) uniform in [3/4, 4/3] and a height uniform among
  the whole numbers whose crops cover area_min..area_max % of the image;
  the whole image when no attempt fits."""
  lo = area_min / 100 * height * width
  hi = area_max / 100 * height * width
  for _ in range(10):
    aspect = rng.uniform(3 / 4, 4 / 3)
    h = round(math.sqrt(lo / aspect))
    top_h = round(math.sqrt(hi / aspect))
    if round(top_h * aspect) > width:
      top_h = int((width + 0.5 - 1e-7) / aspect)
      if round(top_h * aspect) > width:
        top_h -= 1
    top_h = min(top_h, height)
    h = min(h, top_h)
    if h < top_h:
      h += int(rng.integers(0, top_h - h + 1))
    w = round(h * aspect)
    if w * h < lo:  # rounding: one row taller, then one shorter
      h += 1
      w = round(h * aspect)
    if w * h > hi:
      h -= 1
      w = round(h * aspect)
    if lo <= w * h <= hi and 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h)) if h < height else 0
      left = int(rng.integers(0, width - w)) if w < width else 0
      return left, top, w, h
  return 0, 0, width, height


@OPS.example
def decode():
  return _on_image(lambda image, rng: _array(image))


@OPS.example
def inception_crop(size, area_min=5, area_max=100):
  """Random crop of 5-100% of the area, aspect 3/4-4/3, resized to `size`."""
  out_h, out_w = op_strings.hw(size)

  def crop(image, rng):
    pixels = _array(image)
    left, top, w, h = crop_box(*pixels.shape[:2], rng, area_min, area_max)
    return _resized(pixels[top:top + h, left:left + w], out_h, out_w)
  return _on_image(crop)


@OPS.example
def decode_inception_crop(size, area_min=5, area_max=100):
  """inception_crop of encoded bytes (the tf.data op's name; here the whole
  image is decoded)."""
  return inception_crop(size, area_min, area_max)


@OPS.example
def resize(size, method='bilinear'):
  out_h, out_w = op_strings.hw(size)
  interpolation = _method(method)
  return _on_image(lambda image, rng: _resized(_array(image), out_h, out_w,
                                               interpolation))


@OPS.example
def resize_small(size, method='bilinear'):
  """Resizes so that the shorter side is `size`, keeping the aspect ratio."""
  interpolation = _method(method)

  def op(image, rng):
    pixels = _array(image)
    height, width = pixels.shape[:2]
    scale = size / min(height, width)
    return _resized(pixels, max(round(height * scale), size),
                    max(round(width * scale), size), interpolation)
  return _on_image(op)


@OPS.example
def central_crop(size):
  ch, cw = op_strings.hw(size)

  def op(image, rng):
    pixels = _array(image)
    top, left = (pixels.shape[0] - ch) // 2, (pixels.shape[1] - cw) // 2
    if top < 0 or left < 0:
      raise ValueError(f'central_crop({size}) of an image of '
                       f'{pixels.shape[0]}x{pixels.shape[1]}')
    return pixels[top:top + ch, left:left + cw]
  return _on_image(op)


@OPS.example
def random_crop(size):
  ch, cw = op_strings.hw(size)

  def op(image, rng):
    pixels = _array(image)
    if pixels.shape[0] < ch or pixels.shape[1] < cw:
      raise ValueError(f'random_crop({size}) of an image of '
                       f'{pixels.shape[0]}x{pixels.shape[1]}')
    top = int(rng.integers(0, pixels.shape[0] - ch + 1))
    left = int(rng.integers(0, pixels.shape[1] - cw + 1))
    return pixels[top:top + ch, left:left + cw]
  return _on_image(op)


@OPS.example
def pad(pixels, value=0):
  """Pads every side (e.g. before random_crop, for small translations)."""
  return _on_image(lambda image, rng: np.pad(
      _array(image), ((pixels, pixels), (pixels, pixels), (0, 0)),
      constant_values=value))


@OPS.example
def flip_lr():
  def op(image, rng):
    if rng.random() < 0.5:
      return image
    if isinstance(image, Image.Image):
      return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return cv2.flip(_array(image), 1)  # numpy's reversed copy is 10x slower
  return _on_image(op)


@OPS.example
def randaug(num_layers=2, magnitude=10, magnitude_std=0):
  """RandAugment (vit_jax/data/randaugment_pil.py)."""
  randaugment_pil.check_arguments(magnitude, magnitude_std)
  return _on_image(lambda image, rng: randaugment_pil.randaugment(
      _pil(image), rng, num_layers=num_layers, magnitude=magnitude,
      magnitude_std=magnitude_std))


def _to_range(pixels: np.ndarray, low: float, high: float) -> np.ndarray:
  if pixels.dtype != np.uint8:
    return pixels
  out = pixels.astype(np.float32)
  out *= np.float32((high - low) / 255)
  out += np.float32(low)
  return out


@OPS.example
def value_range(low=-1.0, high=1.0):
  op = _on_image(lambda image, rng: _to_range(_array(image), low, high))
  op.value_range = (low, high)  # Preprocess applies a final one per batch
  return op


@OPS.example
def random_erase(probability=0.25, area_min=0.02, area_max=1 / 3,
                 aspect_min=0.3, aspect_max=3.3, attempts=10):
  """Random erasing as the tf.data op does it (timm's RandomErasing,
  'pixel' mode, one box): standard-normal noise in the [-1, 1] pixels
  after value_range, uniform bytes on uint8 images."""
  def op(image, rng):
    pixels = np.array(_array(image))
    height, width = pixels.shape[:2]
    target = height * width * rng.uniform(area_min, area_max, attempts)
    aspect = np.exp(rng.uniform(math.log(aspect_min), math.log(aspect_max),
                                attempts))
    box_h = np.round(np.sqrt(target * aspect)).astype(int)
    box_w = np.round(np.sqrt(target / aspect)).astype(int)
    fits = (box_h < height) & (box_w < width)
    corner = rng.random(2)
    erase = rng.random() < probability
    if not (erase and fits.any()):
      return pixels
    first = int(np.argmax(fits))
    h, w = int(box_h[first]), int(box_w[first])
    top = int(corner[0] * (height - h + 1))
    left = int(corner[1] * (width - w + 1))
    if pixels.dtype == np.uint8:
      noise = rng.integers(0, 256, (h, w, pixels.shape[2]), dtype=np.uint8)
    else:
      noise = rng.standard_normal((h, w, pixels.shape[2])).astype(pixels.dtype)
    pixels[top:top + h, left:left + w] = noise
    return pixels
  return _on_image(op)


def _mix_labels(labels, lam):
  return lam * labels + (1 - lam) * np.roll(labels, 1, axis=0)


@OPS.batch
def mixup(alpha=0.2):
  """Each example blended with its neighbour in the batch, weight ~ Beta."""
  def op(batch, rng):
    lam = np.float32(rng.beta(alpha, alpha))
    images = lam * batch['image'] + (1 - lam) * np.roll(batch['image'], 1, 0)
    return {**batch, 'image': images, 'label': _mix_labels(batch['label'], lam)}
  return op


@OPS.batch
def cutmix(alpha=1.0):
  """A box from the neighbouring example pasted in; labels by area."""
  def op(batch, rng):
    lam = rng.beta(alpha, alpha)
    h, w = batch['image'].shape[1:3]
    ratio = math.sqrt(1 - lam)
    bh, bw = int(h * ratio), int(w * ratio)
    cy, cx = (int(c) for c in rng.random(2) * (h, w))
    top, bottom = max(cy - bh // 2, 0), min(cy + bh // 2, h)
    left, right = max(cx - bw // 2, 0), min(cx + bw // 2, w)
    images = np.array(batch['image'])
    images[:, top:bottom, left:right] = np.roll(
        batch['image'], 1, 0)[:, top:bottom, left:right]
    kept = np.float32(1 - (bottom - top) * (right - left) / (h * w))
    return {**batch, 'image': images,
            'label': _mix_labels(batch['label'], kept)}
  return op


class Preprocess:
  """A parsed op string: `example_fn(example, seed)`, `batch_images(list of
  example images)` and `batch_fn(batch, seed)`, seeds being tuples of
  non-negative ints. `needs_onehot` says if labels must be one-hot before
  batching (batch ops mix labels).

  A value_range that ends the example ops (or the implicit one) is applied
  by batch_images to the stacked uint8 batch: one float32 write per batch
  instead of a float32 image per example copied again by the stacking."""

  def __init__(self, spec: str):
    self.spec = spec
    self.example_ops, self.batch_ops, has_range = op_strings.split_ops(spec, OPS)
    self.final_range = (-1.0, 1.0)
    if has_range:
      last = self.example_ops[-1]
      self.final_range = getattr(last, 'value_range', None)
      if self.final_range:
        self.example_ops.pop()
    self.needs_onehot = bool(self.batch_ops)

  def example_fn(self, example: dict, seed: tuple[int, ...]) -> dict:
    """The example through the example ops (uint8 pixels before the final
    value_range, which batch_images applies)."""
    # One generator per example, drawn from by the ops in turn.
    rng = np.random.default_rng(seed)
    for op in self.example_ops:
      example = op(example, rng)
    return {**example, 'image': _array(example['image'])}

  def batch_images(self, images: list[np.ndarray]) -> np.ndarray:
    """Example images stacked, in the op string's value range, float32."""
    stacked = np.stack(images)
    if self.final_range:
      stacked = _to_range(stacked, *self.final_range)
    return stacked.astype(np.float32, copy=False)

  def batch_fn(self, batch: dict, seed: tuple[int, ...]) -> dict:
    """With several batch ops, each batch uses one, chosen at random."""
    rng = np.random.default_rng(seed)
    op = self.batch_ops[int(rng.integers(len(self.batch_ops)))]
    return op(batch, rng)
