"""Writes the demo's 360 held-out digits as PNG files, <index>_<label>.png,
so that `vit_jax.predict` can be run on image files and checked against the
run's own held-out evaluation.

  python crosschecks/digits_as_files.py /tmp/digits_png
  python -m vit_jax.predict --model /tmp/vit_demo --images /tmp/digits_png \\
      --output /tmp/preds.jsonl
  python crosschecks/digits_as_files.py /tmp/digits_png --score /tmp/preds.jsonl
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from PIL import Image

from vit_jax.data.sources import digits_source


def write(folder: str) -> int:
  source = digits_source()
  os.makedirs(folder, exist_ok=True)
  test = source.splits['test']
  for i in test:
    Image.fromarray(source.images[i]).save(
        os.path.join(folder, f'{i:04d}_{source.labels[i]}.png'))
  return len(test)


def score(predictions: str) -> tuple[int, int]:
  """(correct top-1, images) of a predict JSONL over these files."""
  records = [json.loads(line) for line in open(predictions)]
  scored = [r for r in records if 'top_k' in r]
  correct = sum(r['top_k'][0]['label'] == os.path.basename(r['image'])
                .rsplit('_', 1)[1].split('.')[0] for r in scored)
  return correct, len(scored)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('folder')
  parser.add_argument('--score', help='a predict .jsonl over the folder')
  args = parser.parse_args()
  if args.score:
    correct, total = score(args.score)
    print(f'top-1 {correct}/{total} = {correct / total:.4f}')
  else:
    print(f'wrote {write(args.folder)} held-out digits to {args.folder}')


if __name__ == '__main__':
  main()
