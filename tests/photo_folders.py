"""Folders of real JPEG photos (crops of the sample photos that ship with
scikit-learn) in the <split>/<class>/<image> layout."""


import numpy as np


PHOTO_CLASSES = ('china_left', 'china_right', 'flower_left', 'flower_right')


def make_photo_folder(root, train_per_class=30, test_per_class=10, seed=0):
  """Real photos in `root/{train,test}/<class>/*.jpg`: JPEG crops of
  random size and place from the left and right halves of the two sample
  photos that ship with scikit-learn (427x640 each)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  china, flower = load_sample_images().images
  halves = {'china_left': china[:, :320], 'china_right': china[:, 320:],
            'flower_left': flower[:, :320], 'flower_right': flower[:, 320:]}
  rng = np.random.default_rng(seed)
  for split, count in (('train', train_per_class), ('test', test_per_class)):
    for name in PHOTO_CLASSES:
      folder = root / split / name
      folder.mkdir(parents=True)
      half = halves[name]
      for i in range(count):
        h, w = rng.integers(48, 160, size=2)
        top = rng.integers(0, half.shape[0] - h)
        left = rng.integers(0, half.shape[1] - w)
        Image.fromarray(half[top:top + h, left:left + w]).save(
            folder / f'{i}.jpg', quality=90)
  return root
