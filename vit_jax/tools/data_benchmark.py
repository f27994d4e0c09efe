"""Input-pipeline throughput on JPEGs written here (no dataset needed).

  python -m vit_jax.tools.data_benchmark [--images 512] [--threads 1,2] [--batch 64]

Writes ImageNet-like JPEGs (random sizes around 500x375, smooth content so
they compress like photos) into a folder dataset, then times the training
pipeline for each op string and thread count: images/s and images/s per
thread, after a warm-up pass.
"""

import os
import tempfile
import time

from absl import flags
import numpy as np

from vit_jax import app
from vit_jax.data import pipeline, sources
from vit_jax.runtime.native_logs import import_tensorflow

tf = import_tensorflow()

PIPELINES = {
    'fused': 'decode_inception_crop(224)|flip_lr',
    'unfused': 'decode|inception_crop(224)|flip_lr',
    'fused+randaug': 'decode_inception_crop(224)|flip_lr|randaug(2,15)',
}


def write_jpegs(root: str, count: int, seed: int = 0) -> None:
  rng = np.random.default_rng(seed)
  for i in range(count):
    folder = os.path.join(root, 'train', f'class{i % 10}')
    os.makedirs(folder, exist_ok=True)
    h, w = rng.integers(300, 450), rng.integers(400, 600)
    coarse = rng.uniform(0, 255, (h // 16 + 1, w // 16 + 1, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse[None], (h, w), 'bicubic')[0]
    noise = rng.normal(0, 8, (h, w, 3))
    pixels = np.clip(smooth.numpy() + noise, 0, 255).astype(np.uint8)
    with open(os.path.join(folder, f'{i}.jpg'), 'wb') as f:
      f.write(tf.io.encode_jpeg(pixels, quality=90).numpy())


def time_pipeline(source, pp: str, threads: int, batch: int, batches: int) -> float:
  iterator = pipeline.TrainIterator(source, 'train', pp=pp, batch_size=batch,
                                    seed=0, cache_raw=True, threads=threads,
                                    shuffle_buffer=1024)
  for _ in range(max(2, batches // 4)):  # warm-up: fills the raw cache
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch / (time.perf_counter() - start)


def define_flags():
  flags.DEFINE_integer('images', 512, 'JPEGs to write and read.')
  flags.DEFINE_integer('batch', 64, 'Batch size.')
  flags.DEFINE_integer('batches', 24, 'Timed batches.')
  flags.DEFINE_list('threads', ['1', '2'], 'Thread counts to time.')
  flags.DEFINE_list('pipelines', list(PIPELINES), 'Op strings to time.')


def main():
  args = flags.FLAGS
  with tempfile.TemporaryDirectory() as root:
    write_jpegs(root, args.images)
    source = sources.FolderSource(root)
    print(f'{args.images} JPEGs, batch {args.batch}, {os.cpu_count()} CPUs, '
          f'TensorFlow {tf.__version__}')
    print(f'{"pipeline":<16}{"threads":>8}{"img/s":>10}{"img/s/thread":>14}')
    for name in args.pipelines:
      for threads in (int(t) for t in args.threads):
        rate = time_pipeline(source, PIPELINES[name], threads, args.batch,
                             args.batches)
        print(f'{name:<16}{threads:>8}{rate:>10.0f}{rate / threads:>14.0f}')


def run() -> None:
  define_flags()
  app.run(main, required=(), distributed=False)


if __name__ == '__main__':
  run()
