"""RandAugment (Cubuk et al. 2019) with Pillow and NumPy, for the Grain
input path: the 17 ops, magnitudes and magnitude noise of the tf.data
version (vit_jax/data/randaugment.py), drawn from a NumPy generator.

Pixels differ from the tf.data version where the libraries do (Pillow's
rotation and enhancement round differently); what an op does at a given
magnitude is the same.
"""

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

_FILL = (128, 128, 128)  # grey for pixels that geometric ops move in


def _signed(rng, value):
  return value if rng.random() >= 0.5 else -value


def _steps(m, scale, rounding=np.floor) -> int:
  return int(rounding(float(m) / 10 * scale))


def _enhance_factor(rng, m) -> float:
  return max(1.0 + _signed(rng, m / 10 * 0.9), 0.0)


def _affine(image, coefficients):
  """Output pixel (x, y) reads input (a x + b y + c, d x + e y + f)."""
  return image.transform(image.size, Image.Transform.AFFINE, coefficients,
                         resample=Image.Resampling.NEAREST, fillcolor=_FILL)


def identity(image, rng, m):
  return image


def auto_contrast(image, rng, m):
  return ImageOps.autocontrast(image)


def equalize(image, rng, m):
  return ImageOps.equalize(image)


def invert(image, rng, m):
  return ImageOps.invert(image)


def rotate(image, rng, m):
  return image.rotate(_signed(rng, m / 10 * 30.0),
                      resample=Image.Resampling.NEAREST, fillcolor=_FILL)


def posterize(image, rng, m):
  dropped = min(_steps(m, 4, np.round), 7)  # round half to even
  return ImageOps.posterize(image, 8 - dropped)


def solarize(image, rng, m):
  return ImageOps.solarize(image, max(256 - _steps(m, 256), 0))


def solarize_add(image, rng, m):
  pixels = np.asarray(image)
  added = np.clip(pixels.astype(np.int32) + _steps(m, 110), 0, 255)
  return Image.fromarray(np.where(pixels < 128, added, pixels).astype(np.uint8))


def color(image, rng, m):
  return ImageEnhance.Color(image).enhance(_enhance_factor(rng, m))


def contrast(image, rng, m):
  return ImageEnhance.Contrast(image).enhance(_enhance_factor(rng, m))


def brightness(image, rng, m):
  return ImageEnhance.Brightness(image).enhance(_enhance_factor(rng, m))


def sharpness(image, rng, m):
  return ImageEnhance.Sharpness(image).enhance(_enhance_factor(rng, m))


def shear_x(image, rng, m):
  return _affine(image, (1, _signed(rng, m / 10 * 0.3), 0, 0, 1, 0))


def shear_y(image, rng, m):
  return _affine(image, (1, 0, 0, _signed(rng, m / 10 * 0.3), 1, 0))


def translate_x(image, rng, m):
  return _affine(image, (1, 0, _signed(rng, m / 10 * 0.45) * image.width, 0, 1, 0))


def translate_y(image, rng, m):
  return _affine(image, (1, 0, 0, 0, 1, _signed(rng, m / 10 * 0.45) * image.height))


def cutout(image, rng, m):
  """A grey square of side up to 40% of the shorter side."""
  pixels = np.array(image)
  h, w = pixels.shape[:2]
  half = int(m / 10 * 0.2 * min(h, w))
  cy, cx = int(rng.random() * h), int(rng.random() * w)
  pixels[max(cy - half, 0):max(cy + half, 0),
         max(cx - half, 0):max(cx + half, 0)] = _FILL
  return Image.fromarray(pixels)


OPS = (identity, auto_contrast, equalize, invert, rotate, posterize, solarize,
       solarize_add, color, contrast, brightness, sharpness, shear_x, shear_y,
       translate_x, translate_y, cutout)


def layer_magnitude(rng, magnitude: float, magnitude_std: float) -> float:
  """`magnitude`, or with `magnitude_std` > 0 a draw from N(magnitude,
  magnitude_std^2) clipped to [0, max(10, magnitude)] (timm's `mstd`)."""
  if not magnitude_std:
    return magnitude
  draw = magnitude + magnitude_std * rng.standard_normal()
  return float(np.clip(draw, 0.0, max(10.0, magnitude)))


def check_arguments(magnitude: float, magnitude_std: float) -> None:
  if not 0 <= magnitude <= 30:
    raise ValueError(f'randaug magnitude {magnitude} is outside [0, 30]; '
                     f'10 is the reference strength, AugReg uses 10 to 20.')
  if magnitude_std < 0:
    raise ValueError(f'randaug magnitude noise {magnitude_std} is negative; '
                     f'DeiT uses 0.5, 0 turns it off.')


def randaugment(image: Image.Image, rng: np.random.Generator, *,
                num_layers: int = 2, magnitude: float = 10,
                magnitude_std: float = 0.) -> Image.Image:
  """`num_layers` ops from OPS, chosen independently per example, each at
  `layer_magnitude`."""
  for _ in range(num_layers):
    op = OPS[rng.integers(len(OPS))]
    m = layer_magnitude(rng, magnitude, magnitude_std)
    image = op(image, rng, m)
  return image
