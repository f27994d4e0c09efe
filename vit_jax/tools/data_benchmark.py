"""Input-pipeline throughput on JPEGs written here (no dataset needed): the
Grain path (ArrayRecord, Pillow/NumPy ops) against the tf.data path on the
same images and the same op strings.

  python -m vit_jax.tools.data_benchmark [--images 512] [--threads 1,2] [--batch 64]

Writes ImageNet-like JPEGs (random sizes around 500x375, smooth content so
they compress like photos) as an image folder and converts it to
ArrayRecord shards. Then, for each op string and thread count, times both
paths in alternation (`--rounds` times each, a fresh iterator each time,
warmed up by 2 batches; the median kept): images/s and images/s per thread. tf.data reads the folder with
the encoded bytes cached in memory; Grain reads the shards (from the page
cache) with that many threads, or with `--grain_workers` processes.
"""

import os
import statistics
import tempfile
import time

from absl import flags
import numpy as np
from PIL import Image

from vit_jax import app
from vit_jax.data import arrayrecord, convert, pipeline, sources

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
    h, w = int(rng.integers(300, 450)), int(rng.integers(400, 600))
    coarse = rng.uniform(0, 255, (h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))
    noise = rng.normal(0, 8, (h, w, 3))
    pixels = np.clip(smooth + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(os.path.join(folder, f'{i}.jpg'), quality=90)


def _rate(iterator, batch: int, batches: int) -> float:
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch / (time.perf_counter() - start)


def tf_data_iterator(folder_source, pp: str, threads: int, batch: int):
  return pipeline.TrainIterator(folder_source, 'train', pp=pp,
                                batch_size=batch, seed=0, cache_raw=True,
                                threads=threads, shuffle_buffer=1024)


def grain_iterator(ar_source, pp: str, threads: int, batch: int, workers: int):
  from vit_jax.data import grain_pipeline  # pylint: disable=g-import-not-at-top
  return grain_pipeline.TrainIterator(
      ar_source.examples('train'), pp=pp, batch_size=batch, seed=0,
      threads=threads, workers=workers)


def define_flags():
  flags.DEFINE_integer('images', 512, 'JPEGs to write and read.')
  flags.DEFINE_integer('batch', 64, 'Batch size.')
  flags.DEFINE_integer('batches', 16, 'Timed batches per round.')
  flags.DEFINE_integer('rounds', 3, 'Timed rounds per path, alternating.')
  flags.DEFINE_list('threads', ['1', '2'], 'Thread counts to time.')
  flags.DEFINE_integer('grain_workers', 0, 'Grain worker processes (0: '
                       'threads in this process).')
  flags.DEFINE_list('pipelines', list(PIPELINES), 'Op strings to time.')


def main():
  args = flags.FLAGS
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as root:
    write_jpegs(os.path.join(root, 'folder'), args.images)
    convert.convert(f'folder:{root}/folder', f'{root}/ar', progress=False,
                    log=lambda _: None)
    folder = sources.FolderSource(f'{root}/folder')
    records = arrayrecord.ArrayRecordSource(f'{root}/ar')
    print(f'{args.images} JPEGs, batch {args.batch}, {os.cpu_count()} CPUs, '
          f'TensorFlow {tf.__version__}, Pillow {Image.__version__}; median '
          f'of {args.rounds} rounds of {args.batches} batches')
    print(f'{"pipeline":<16}{"threads":>8}{"tf.data img/s":>15}{"per thread":>12}'
          f'{"Grain img/s":>13}{"per thread":>12}')
    for name in args.pipelines:
      pp = PIPELINES[name]
      for threads in (int(t) for t in args.threads):
        makers = {
            'tf.data': lambda: tf_data_iterator(folder, pp, threads, args.batch),
            'grain': lambda: grain_iterator(records, pp, threads, args.batch,
                                            args.grain_workers)}
        rates = {path: [] for path in makers}
        for _ in range(args.rounds):
          for path, make in makers.items():
            # A fresh iterator per round, closed before the other path runs:
            # neither prefetches in the background while the other is timed.
            iterator = make()
            _rate(iterator, args.batch, 2)  # warm-up: caches, threads
            rates[path].append(_rate(iterator, args.batch, args.batches))
            if hasattr(iterator, 'close'):
              iterator.close()
            del iterator
        tf_rate, grain_rate = (statistics.median(rates[p]) for p in makers)
        print(f'{name:<16}{threads:>8}{tf_rate:>15.0f}{tf_rate / threads:>12.0f}'
              f'{grain_rate:>13.0f}{grain_rate / threads:>12.0f}', flush=True)


def run() -> None:
  define_flags()
  app.run(main, required=(), distributed=False)


if __name__ == '__main__':
  run()
