"""Builds a model variant, runs it once, and prints its size and output.

  python -m vit_jax.summary --model=B/16 [--image_size=224] [--num_classes=1000]
      [--dtype=bfloat16] [--scan] [--params]
"""

import time

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import app
from vit_jax.formats.npz import flatten_params
from vit_jax.models import build_model
from vit_jax.models.variants import get_model_config, known_names


def define_flags():
  """This command's flags, defined when it runs (`--model` means something
  else to vit_jax.predict, which may be imported beside it)."""
  flags.DEFINE_string('model', 'B/16', f'variant name, one of {known_names()} '
                      'or any <width>/<patch>')
  flags.DEFINE_integer('image_size', 224, 'Input resolution.')
  flags.DEFINE_integer('num_classes', 1000,
                       '0 builds a feature extractor without a head.')
  flags.DEFINE_integer('batch_size', 2, 'Images in the forward pass.')
  flags.DEFINE_string('dtype', 'float32', 'Compute dtype.')
  flags.DEFINE_bool('scan', False, 'Run the encoder as one scanned layer.')
  flags.DEFINE_bool('params', False, 'Also list every parameter with its shape.')


def main():
  args = flags.FLAGS
  config = get_model_config(args.model)
  config.dtype = args.dtype
  config.scan = args.scan
  model = build_model(config, args.num_classes or None)
  images = jnp.asarray(
      np.random.default_rng(0).uniform(
          -1, 1, (args.batch_size, args.image_size, args.image_size, 3)),
      jnp.float32)

  start = time.perf_counter()
  params = jax.jit(lambda rng: nn.unbox(model.init(rng, images[:1]))['params'])(
      jax.random.key(0))
  forward = jax.jit(lambda p, x: model.apply({'params': p}, x))
  outputs = jax.block_until_ready(forward(params, images))
  elapsed = time.perf_counter() - start

  flat = flatten_params(params)
  count = sum(int(np.prod(v.shape)) for v in flat.values())
  if args.params:
    width = max(len(k) for k in flat)
    for key, value in flat.items():
      print(f'{key:<{width}}  {str(tuple(value.shape)):<20} {value.dtype}')
  print(f'model           {config.name} ({"scanned" if args.scan else "per-layer"} '
        f'encoder, {args.dtype} compute)')
  print(f'parameters      {count:,} in {len(flat)} arrays')
  print(f'input           {tuple(images.shape)}')
  print(f'output          {tuple(outputs.shape)} {outputs.dtype}, '
        f'finite: {bool(jnp.all(jnp.isfinite(outputs)))}')
  print(f'init + forward  {elapsed:.1f} s on {jax.devices()[0].platform} '
        f'(compilation included)')


def run() -> None:
  define_flags()
  app.run(main, required=(), distributed=False)


if __name__ == '__main__':
  run()
