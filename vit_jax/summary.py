"""Builds a model variant, runs it once, and prints its size and output.

  python -m vit_jax.summary --model=B/16 [--image_size=224] [--num_classes=1000]
      [--dtype=bfloat16] [--scan] [--params]
"""

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.variants import get_model_config, known_names
from vit_jax.checkpoints import flatten_params
from vit_jax.models import build_model


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='B/16',
                      help=f'variant name, one of {known_names()} or any '
                      '<width>/<patch>')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--num_classes', type=int, default=1000,
                      help='0 builds a feature extractor without a head')
  parser.add_argument('--batch_size', type=int, default=2)
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--scan', action='store_true',
                      help='run the encoder as one scanned layer')
  parser.add_argument('--params', action='store_true',
                      help='also list every parameter with its shape')
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
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


if __name__ == '__main__':
  main()
