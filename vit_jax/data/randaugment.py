"""RandAugment (Cubuk et al. 2019) on uint8 images with stateless randomness.

Magnitude 10 is the reference strength of each op; AugReg's recipes go up
to 20, which scales the geometric and colour ops further. Every op grows
stronger with the magnitude (for posterize and solarize too, unlike the
original TPU code, where magnitude 0 turned images black and solarize was
strongest at low magnitudes).
"""

import math

from vit_jax.data import randaugment_pil
from vit_jax.runtime.native_logs import import_tensorflow

tf = import_tensorflow()

_FILL = 128  # grey for pixels that geometric ops move in from outside


def _float(image):
  return tf.cast(image, tf.float32)


def to_uint8(image):
  """Rounds and clips to [0, 255], as uint8 (every op's pixel output)."""
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _blend(degenerate, image, factor):
  """factor 0 -> degenerate, 1 -> image, >1 extrapolates."""
  return to_uint8(_float(degenerate) + factor * (_float(image) - _float(degenerate)))


def _signed(seed, value):
  sign = tf.where(tf.random.stateless_uniform([], seed) < 0.5, -1.0, 1.0)
  return sign * value


def _affine(image, transform):
  """Projective transform mapping output pixel (x, y) to an input pixel."""
  transform = tf.cast(tf.reshape(transform, [1, 8]), tf.float32)
  shape = tf.shape(image)[:2]
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transform, output_shape=shape,
      fill_value=float(_FILL), interpolation='NEAREST', fill_mode='CONSTANT')
  return out[0]


def identity(image, seed, m):
  return image


def auto_contrast(image, seed, m):
  lo = tf.reduce_min(image, axis=[0, 1], keepdims=True)
  hi = tf.reduce_max(image, axis=[0, 1], keepdims=True)
  lo, hi = tf.cast(lo, tf.float64), tf.cast(hi, tf.float64)
  scale = 255.0 / tf.maximum(hi - lo, 1.0)
  # Truncated like PIL's ImageOps.autocontrast lookup table.
  stretched = tf.floor((tf.cast(image, tf.float64) - lo) * scale + 1e-9)
  return tf.where(hi > lo, to_uint8(stretched), image)


def equalize(image, seed, m):
  """Per-channel histogram equalization (PIL's ImageOps.equalize)."""
  def channel(c):
    hist = tf.histogram_fixed_width(tf.cast(c, tf.int32), [0, 255], nbins=256)
    last = tf.gather(hist, tf.reduce_max(tf.where(hist > 0)))
    step = (tf.reduce_sum(hist) - last) // 255
    lut = (tf.cumsum(hist) - hist + step // 2) // tf.maximum(step, 1)
    lut = tf.clip_by_value(lut, 0, 255)
    return tf.where(step == 0, c, tf.cast(tf.gather(lut, tf.cast(c, tf.int32)), tf.uint8))
  channels = [channel(image[..., i]) for i in range(3)]
  return tf.stack(channels, -1)


def invert(image, seed, m):
  return 255 - image


def rotate(image, seed, m):
  angle = _signed(seed, m / 10 * 30.0) * math.pi / 180
  h, w = _float(tf.shape(image)[0]), _float(tf.shape(image)[1])
  cos, sin = tf.cos(angle), tf.sin(angle)
  cx, cy = (w - 1) / 2, (h - 1) / 2
  # Inverse rotation about the centre: output (x, y) reads input (x', y').
  x_off = cx - cos * cx + sin * cy
  y_off = cy - sin * cx - cos * cy
  return _affine(image, tf.stack([cos, -sin, x_off, sin, cos, y_off, 0., 0.]))


# The magnitude is a number or (with magnitude noise) a scalar tensor;
# float64 keeps the integer steps below exactly where Python puts them.
def _steps(m, scale, rounding=tf.floor):
  return tf.cast(rounding(tf.cast(m, tf.float64) / 10 * scale), tf.int32)


def posterize(image, seed, m):
  dropped = tf.minimum(_steps(m, 4, tf.round), 7)  # round half to even
  shift = tf.cast(dropped, tf.uint8)
  return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image, seed, m):
  threshold = tf.maximum(256 - _steps(m, 256), 0)
  return tf.where(tf.cast(image, tf.int32) >= threshold, 255 - image, image)


def solarize_add(image, seed, m):
  added = to_uint8(_float(image) + _float(_steps(m, 110)))
  return tf.where(image < 128, added, image)


def _enhance_factor(seed, m):
  return tf.maximum(1.0 + _signed(seed, m / 10 * 0.9), 0.0)


def color(image, seed, m):
  grey = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
  return _blend(grey, image, _enhance_factor(seed, m))


def contrast(image, seed, m):
  grey = tf.image.rgb_to_grayscale(image)
  mean = tf.reduce_mean(_float(grey))
  return _blend(tf.fill(tf.shape(image), mean), image, _enhance_factor(seed, m))


def brightness(image, seed, m):
  return _blend(tf.zeros_like(image), image, _enhance_factor(seed, m))


def sharpness(image, seed, m):
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(_float(image)[None], kernel, [1, 1, 1, 1],
                                  'VALID')[0]
  # The border keeps its pixels, as in PIL.
  smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  interior = tf.pad(tf.ones([h - 2, w - 2, 3]), [[1, 1], [1, 1], [0, 0]])
  degenerate = interior * smooth + (1 - interior) * _float(image)
  return _blend(degenerate, image, _enhance_factor(seed, m))


def shear_x(image, seed, m):
  s = _signed(seed, m / 10 * 0.3)
  return _affine(image, tf.stack([1., s, 0., 0., 1., 0., 0., 0.]))


def shear_y(image, seed, m):
  s = _signed(seed, m / 10 * 0.3)
  return _affine(image, tf.stack([1., 0., 0., s, 1., 0., 0., 0.]))


def translate_x(image, seed, m):
  dx = _signed(seed, m / 10 * 0.45) * _float(tf.shape(image)[1])
  return _affine(image, tf.stack([1., 0., dx, 0., 1., 0., 0., 0.]))


def translate_y(image, seed, m):
  dy = _signed(seed, m / 10 * 0.45) * _float(tf.shape(image)[0])
  return _affine(image, tf.stack([1., 0., 0., 0., 1., dy, 0., 0.]))


def cutout(image, seed, m):
  """A grey square of side up to 40% of the shorter side."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  half = tf.cast(m / 10 * 0.2 * _float(tf.minimum(h, w)), tf.int32)
  center = tf.random.stateless_uniform([2], seed, 0, 1)
  cy = tf.cast(center[0] * _float(h), tf.int32)
  cx = tf.cast(center[1] * _float(w), tf.int32)
  rows = tf.range(h)[:, None]
  cols = tf.range(w)[None, :]
  box = ((rows >= cy - half) & (rows < cy + half) &
         (cols >= cx - half) & (cols < cx + half))[:, :, None]
  return tf.where(box, tf.constant(_FILL, tf.uint8), image)


OPS = (identity, auto_contrast, equalize, invert, rotate, posterize, solarize,
       solarize_add, color, contrast, brightness, sharpness, shear_x, shear_y,
       translate_x, translate_y, cutout)


def layer_magnitude(seed: tf.Tensor, magnitude: float, magnitude_std: float):
  """The magnitude of one op: `magnitude`, or with `magnitude_std` > 0 a
  draw from N(magnitude, magnitude_std^2) clipped to [0, max(10,
  magnitude)] (timm's `mstd`, e.g. DeiT's rand-m9-mstd0.5: its upper
  bound is the reference strength 10)."""
  if not magnitude_std:
    return magnitude
  draw = magnitude + magnitude_std * tf.random.stateless_normal([], seed)
  return tf.clip_by_value(draw, 0.0, max(10.0, magnitude))


def randaugment(image: tf.Tensor, seed: tf.Tensor, *, num_layers: int = 2,
                magnitude: float = 10, magnitude_std: float = 0.) -> tf.Tensor:
  """`num_layers` ops from OPS, chosen independently per example, each at
  `layer_magnitude`."""
  randaugment_pil.check_arguments(magnitude, magnitude_std)
  for layer in range(num_layers):
    layer_seed = tf.random.experimental.stateless_fold_in(seed, layer)
    choice_seed, op_seed = tf.unstack(
        tf.random.experimental.stateless_split(layer_seed, 2))
    m = layer_magnitude(tf.random.experimental.stateless_fold_in(layer_seed, 2),
                        magnitude, magnitude_std)
    choice = tf.random.stateless_uniform([], choice_seed, 0, len(OPS), tf.int32)
    image = tf.switch_case(choice, [
        lambda op=op, image=image: tf.ensure_shape(
            op(image, op_seed, m), image.shape) for op in OPS])
  return image
