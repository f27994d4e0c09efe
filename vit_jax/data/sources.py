"""The tf.data sources: TFDS, image folders, in-memory arrays (opened
through vit_jax/data/registry.py).

A source reads one split for one process and returns a tf.data.Dataset of
{'image': encoded bytes or uint8 (h, w, 3), 'label': int32 or multi-hot
float32, 'key': string} in a fixed order, together with how many examples
this process holds. Processes hold disjoint, contiguous parts of the split
that together cover it (sizes differ by at most one). `TfDataSource` turns
that into the registry's `Source` through vit_jax/data/pipeline.py.
"""

import os

import jax
import numpy as np

from vit_jax.data import digits, pipeline
from vit_jax.data.image_ops import IMAGE_SUFFIXES
from vit_jax.data.splits import process_counts, process_range, slice_split, stratified_order
from vit_jax.data.registry import DatasetNotFoundError
from vit_jax.formats import run_record
from vit_jax.runtime.native_logs import import_tensorflow, import_tensorflow_datasets

tf = import_tensorflow()
tfds = import_tensorflow_datasets()

_TFDS_PREPARE = {
    'imagenet2012': (
        'ImageNet needs a manual download: put ILSVRC2012_img_train.tar and '
        'ILSVRC2012_img_val.tar (from image-net.org) in {data_dir}/downloads/'
        'manual/, then run: tfds build imagenet2012 --data_dir={data_dir}'),
    'imagenet2012_real': (
        'ReaL labels need the ImageNet validation tar: put '
        'ILSVRC2012_img_val.tar in {data_dir}/downloads/manual/, then run: '
        'tfds build imagenet2012_real --data_dir={data_dir}'),
}


class TfDataSource:
  """train_input / eval_passes of a source that reads tf.data datasets."""
  describes_data = True
  uses_pp = True

  def train_input(self, split: str, **options):
    return pipeline.TrainIterator(
        self, split, process_index=jax.process_index(),
        process_count=jax.process_count(), **options)

  def eval_passes(self, split: str, **options):
    return pipeline.eval_batches(
        self, split, process_index=jax.process_index(),
        process_count=jax.process_count(), **options)


class ArraySource(TfDataSource):
  """In-memory uint8 images with integer labels and named index splits."""

  def __init__(self, images: np.ndarray, labels: np.ndarray,
               splits: dict[str, np.ndarray], num_classes: int, name: str):
    self.images, self.labels = images, labels
    self.splits, self.num_classes, self.name = splits, num_classes, name
    self.split_names = sorted(splits)
    self.class_names = run_record.default_labels(num_classes)

  def _indices(self, split: str) -> np.ndarray:
    name, start, end = slice_split(split, self.splits,
                                   lambda name: len(self.splits[name]))
    return self.splits[name][start:end]

  def process_counts(self, split: str, process_count: int) -> list[int]:
    return process_counts(len(self._indices(split)), process_count)

  def read(self, split: str, process_index: int, process_count: int):
    indices = self._indices(split)
    start, end = process_range(len(indices), process_index, process_count)
    mine = indices[start:end]
    keys = np.array([f'{self.name}/{split}/{i}' for i in mine])
    ds = tf.data.Dataset.from_tensor_slices(dict(
        image=self.images[mine], label=self.labels[mine].astype(np.int32),
        key=keys))
    return ds, len(mine)


def digits_source() -> ArraySource:
  """The bundled digits (vit_jax/data/digits.py) as a tf.data source."""
  images, labels, splits = digits.digits_arrays()
  return ArraySource(images, labels, splits, num_classes=10, name='digits')


def _first_few(names: list[str], count: int = 5) -> str:
  return ', '.join(names[:count]) + (f', ... {len(names) - count} more'
                                     if len(names) > count else '')


class FolderSource(TfDataSource):
  """ROOT/<split>/<class>/<image>; classes are the sorted folder names of
  the 'train' split (or of the split itself when there is no 'train')."""

  def __init__(self, root: str):
    if not tf.io.gfile.isdir(root):
      raise DatasetNotFoundError(
          f'image folder {root!r} does not exist; expected '
          f'{root}/train/<class>/<image>.jpg (and validation/<class>/... '
          f'or val/ or test/ for evaluation).')
    self.root = root
    layout = (f'expected {root}/<split>/<class>/<image>, e.g. '
              f'{root}/train/cat/1.jpg and {root}/test/cat/2.jpg')
    self.split_names = self._subdirs(root)
    if not self.split_names:
      raise DatasetNotFoundError(
          f'image folder {root!r} has no split folders; {layout}.')
    class_root = 'train' if 'train' in self.split_names else self.split_names[0]
    self.class_root = class_root
    self.classes = self._subdirs(os.path.join(root, class_root))
    if not self.classes:
      images = [f for f in tf.io.gfile.listdir(os.path.join(root, class_root))
                if f.lower().endswith(IMAGE_SUFFIXES)]
      found = (f'{len(images)} images directly in it' if images
               else 'it is empty')
      raise DatasetNotFoundError(
          f'image folder {os.path.join(root, class_root)!r} has no class '
          f'folders ({found}); {layout}: one folder per class.')
    self.num_classes = len(self.classes)
    self.class_names = list(self.classes)
    self._files: dict[str, tuple[list[str], list[int]]] = {}

  @staticmethod
  def _subdirs(path):
    return sorted(d.rstrip('/') for d in tf.io.gfile.listdir(path)
                  if tf.io.gfile.isdir(os.path.join(path, d)))

  def _list(self, name: str) -> tuple[list[str], list[int]]:
    if name not in self._files:
      # Labels are indices into the training classes, matched by folder
      # name; a class the model never learns cannot be evaluated.
      unknown = sorted(set(self._subdirs(os.path.join(self.root, name))) -
                       set(self.classes))
      if unknown:
        raise DatasetNotFoundError(
            f'image folder {os.path.join(self.root, name)!r} has '
            f'{len(unknown)} class folders that {self.class_root}/ lacks '
            f'({_first_few(unknown)}); the model learns the '
            f'{len(self.classes)} classes of {self.class_root}/: add their '
            f'training images to {self.root}/{self.class_root}/<class>/ or '
            f'move them out of {name}/.')
      files, labels = [], []
      for label, cls in enumerate(self.classes):
        folder = os.path.join(self.root, name, cls)
        if not tf.io.gfile.isdir(folder):
          continue
        names = sorted(f for f in tf.io.gfile.listdir(folder)
                       if f.lower().endswith(IMAGE_SUFFIXES))
        files += [os.path.join(folder, f) for f in names]
        labels += [label] * len(names)
      if not files:
        raise DatasetNotFoundError(
            f'no images in {self.root}/{name}/<class>/ for classes '
            f'{self.classes[:5]}...; expected files ending in {IMAGE_SUFFIXES}.')
      # Classes interleaved, so that a slice such as the held-out
      # 'train[-10%:]' is a class-stratified sample, not the last classes.
      order = stratified_order(labels)
      self._files[name] = ([files[i] for i in order], [labels[i] for i in order])
    return self._files[name]

  def classes_without_images(self, split: str) -> list[str]:
    """The training classes of which `split` holds no image."""
    present = set(self._slice(split)[1])
    return [c for i, c in enumerate(self.classes) if i not in present]

  def _slice(self, split):
    name, start, end = slice_split(split, self.split_names,
                                   lambda name: len(self._list(name)[0]))
    files, labels = self._list(name)
    return files[start:end], labels[start:end]

  def process_counts(self, split: str, process_count: int) -> list[int]:
    return process_counts(len(self._slice(split)[0]), process_count)

  def read(self, split: str, process_index: int, process_count: int):
    files, labels = self._slice(split)
    start, end = process_range(len(files), process_index, process_count)
    files, labels = files[start:end], labels[start:end]
    ds = tf.data.Dataset.from_tensor_slices(
        dict(key=files, label=np.array(labels, np.int32)))
    ds = ds.map(lambda ex: {**ex, 'image': tf.io.read_file(ex['key'])},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds, len(files)


class TfdsSource(TfDataSource):
  """A TFDS dataset read in file order, images left encoded."""

  def __init__(self, name: str, data_dir: str | None = None, *,
               from_directory: bool = False, image_key: str = 'image',
               label_key: str = 'label'):
    self.name = name
    self.data_dir = data_dir or os.environ.get(
        'TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))
    try:
      self.builder = (tfds.builder_from_directory(name) if from_directory
                      else tfds.builder(name, data_dir=self.data_dir))
    except tfds.core.registered.DatasetNotFoundError:
      raise DatasetNotFoundError(
          f'{name!r} is not a TFDS dataset. For your own data use '
          f'dataset=folder:/path (with <split>/<class>/<image> inside) or '
          f'dataset=tfds_dir:/path/to/prepared/name/version.') from None
    except (FileNotFoundError, tf.errors.NotFoundError) as e:
      raise DatasetNotFoundError(f'no prepared TFDS dataset at {name!r}: {e}') from None
    self.image_key, self.label_key = image_key, label_key
    label = self.builder.info.features[label_key]
    self.multi_label = isinstance(label, tfds.features.Sequence)
    label_feature = label.feature if self.multi_label else label
    self.num_classes = label_feature.num_classes
    self.class_names = list(label_feature.names)
    self.split_names = sorted(self.builder.info.splits.keys())

  def _not_found(self, error) -> DatasetNotFoundError:
    base = self.name.split(':')[0]
    how = _TFDS_PREPARE.get(base, f'prepare it with: tfds build {base} '
                                  f'--data_dir={{data_dir}} (needs internet)')
    return DatasetNotFoundError(
        f'TFDS dataset {self.name!r} is not prepared in data_dir '
        f'{self.data_dir!r} (set config.data_dir or TFDS_DATA_DIR). '
        + how.format(data_dir=self.data_dir) + f'. ({error})')

  def _subsplit(self, split, process_index, process_count):
    return tfds.even_splits(split, n=process_count)[process_index]

  def _count(self, subsplit, ds) -> int:
    try:
      return int(self.builder.info.splits[subsplit].num_examples)
    except (KeyError, ValueError, AssertionError):
      # Only mocked builders (tests) lack split metadata: count directly.
      return int(ds.reduce(0, lambda n, _: n + 1))

  def _dataset(self, subsplit):
    try:
      return self.builder.as_dataset(
          split=subsplit, shuffle_files=False,
          decoders={self.image_key: tfds.decode.SkipDecoding()},
          read_config=tfds.ReadConfig(add_tfds_id=True))
    except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as e:
      raise self._not_found(e) from None

  def process_counts(self, split: str, process_count: int) -> list[int]:
    return [self._count(sub, self._dataset(sub)) for sub in
            tfds.even_splits(split, n=process_count)]

  def read(self, split: str, process_index: int, process_count: int):
    subsplit = self._subsplit(split, process_index, process_count)
    ds = self._dataset(subsplit)
    num_classes = self.num_classes

    def convert(ex):
      label = ex[self.label_key]
      if self.multi_label:
        # A sum, not a max: the max of an empty list (ReaL images that no
        # rater labelled) is -inf.
        label = tf.minimum(tf.reduce_sum(tf.one_hot(label, num_classes), axis=0), 1.0)
      else:
        label = tf.cast(label, tf.int32)
      return dict(image=ex[self.image_key], label=label, key=ex['tfds_id'])
    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True), self._count(subsplit, ds)


def _keep_tensorflow_on_the_host() -> None:
  """tf.data runs on the host: keep TensorFlow off the accelerators JAX uses
  (it would otherwise reserve GPU memory)."""
  tf.config.set_visible_devices([], 'GPU')


# The registry's openers (vit_jax/data/registry.py).
def open_folder(argument: str, *, data_dir=None, config=None) -> FolderSource:
  del data_dir, config
  _keep_tensorflow_on_the_host()
  return FolderSource(argument)


def open_tfds_dir(argument: str, *, data_dir=None, config=None) -> TfdsSource:
  del data_dir, config
  _keep_tensorflow_on_the_host()
  return TfdsSource(argument, from_directory=True)


def open_tfds(argument: str, *, data_dir=None, config=None) -> TfdsSource:
  del config
  _keep_tensorflow_on_the_host()
  return TfdsSource(argument, data_dir)
