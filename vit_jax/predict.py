"""Top-k predictions of a trained model on image files, and attention maps.

  python -m vit_jax.predict --model=/tmp/vit_demo --images=photos/ \\
      [--top_k=5] [--output=preds.jsonl|preds.csv] [--attention=DIR]

--model is a workdir of vit_jax.train / vit_jax.finetune (`DIR`, or
`DIR@STEP` for an older checkpoint), an `.npz` (its variant from --config,
else from the config.json beside it), or an AugReg file name. The run's
config.json says the model, the eval preprocessing (`pp_eval`) and the loss
(sigmoid probabilities for sigmoid-trained models, softmax otherwise);
labels.txt gives the class names. --images is comma-separated files, a
folder (searched recursively) or a glob. An image that cannot be read or
decoded is reported by name and the others are still predicted; when none
can be, the run ends with one `error:` line and exit status 2, and writes
no --output.

--attention=DIR writes one PNG per image: the input, the attention rollout
(Abnar & Zuidema 2020) and the last layer's class-token attention per head.
"""

import csv
import io
import json
import os
import re

from absl import flags, logging
from etils import epath
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from vit_jax import app
from vit_jax.data import inputs, registry
from vit_jax.data.image_ops import IMAGE_SUFFIXES
from vit_jax.formats import saved_model
from vit_jax.models import attention_maps
from vit_jax.models import build_model
from vit_jax.models.vit import prefix_tokens
from vit_jax.runtime.native_logs import import_tensorflow, native_noise_dropped
from vit_jax.runtime.paths import write_atomically
from vit_jax.runtime.user_errors import UserError

_MODEL = flags.DEFINE_string(
    'model', None, 'A workdir (DIR or DIR@STEP), an .npz file or an AugReg '
    'file name.')
_IMAGES = flags.DEFINE_string(
    'images', None, 'Image files (comma-separated), a folder or a glob.')
_TOP_K = flags.DEFINE_integer('top_k', 5, 'How many classes per image.')
_OUTPUT = flags.DEFINE_string(
    'output', None, 'Also write the predictions to FILE.jsonl or FILE.csv.')
_ATTENTION = flags.DEFINE_string(
    'attention', None, 'Write an attention-map PNG per image into this folder.')
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', 64, 'Images per step (rounded up to the device count).')


def _glob(pattern: str) -> list[str]:
  """Files matching a glob, local or in a bucket: the pattern applies from
  its first folder with a wildcard."""
  parts = pattern.split('/')
  first = next(i for i, part in enumerate(parts) if any(c in part for c in '*?['))
  base = '/'.join(parts[:first]) or '.'
  return sorted(os.fspath(p) if base != '.' else os.path.relpath(p)
                for p in epath.Path(base).glob('/'.join(parts[first:])))


def list_images(spec: str) -> list[str]:
  """Comma-separated files, a folder (recursively) or a glob -> paths."""
  paths = []
  for item in filter(None, (s.strip() for s in spec.split(','))):
    if any(c in item for c in '*?['):
      paths += _glob(item)
    elif epath.Path(item).is_dir():
      for folder, _, files in sorted(epath.Path(item).walk()):
        paths += [os.fspath(folder / f) for f in sorted(files)
                  if f.lower().endswith(IMAGE_SUFFIXES)]
    else:
      paths.append(item)
  if not paths:
    raise UserError(f'--images={spec!r} names no image files; expected files '
                    f'(comma-separated), a folder or a glob such as '
                    f'"photos/*.jpg".')
  return paths


# The first bytes of the formats TensorFlow decodes (WebP: RIFF....WEBP):
# a file that is none of them is told apart without asking TensorFlow,
# which would log a warning for it, and another when the process exits.
_IMAGE_SIGNATURES = (b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n', b'GIF87a', b'GIF89a',
                     b'BM', b'\xff\x0a', b'\x00\x00\x00\x0cJXL ')


def _read(path: str) -> bytes:
  try:
    data = epath.Path(path).read_bytes()
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'cannot read it ({type(e).__name__}: {e})') from None
  if not data.startswith(_IMAGE_SIGNATURES) and data[8:12] != b'WEBP':
    raise ValueError('cannot decode it as an image (not a JPEG, PNG, GIF, '
                     'BMP or WebP file)')
  return data


def make_preprocess(config):
  """path -> the model input (float32 (size, size, 3)) through the run's
  pp_eval with the ops of the run's input pipeline (so predictions see the
  pixels its evaluation saw), or raises an error that says why the image
  cannot be used."""
  if registry.scheme_of(config.dataset)[0] in registry.GRAIN_SCHEMES:
    return _grain_preprocess(config)
  return _tf_preprocess(config)


def _checked(image: np.ndarray, size: int) -> np.ndarray:
  if image.shape != (size, size, 3):
    raise ValueError(f'pp_eval gives {image.shape}, not ({size}, {size}, 3)')
  return image.astype(np.float32)


def _grain_preprocess(config):
  """The Grain path's ops (OpenCV, Pillow): no TensorFlow."""
  from vit_jax.data import image_ops  # pylint: disable=g-import-not-at-top
  preprocess = image_ops.Preprocess(inputs.filled_op_string(config, 'pp_eval'))

  def run(path: str) -> np.ndarray:
    data = _read(path)
    try:
      example = preprocess.example_fn({'image': data, 'label': 0}, (0, 0))
    except ValueError as e:
      raise ValueError(f'cannot decode it as an image ({e})') from None
    return _checked(preprocess.batch_images([example['image']])[0],
                    config.image_size)
  return run


def _tf_preprocess(config):
  """The tf.data path's ops."""
  # TensorFlow decodes and resizes; imported once there are images to read.
  tf = import_tensorflow()
  from vit_jax.data.ops import Preprocess  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  preprocess = Preprocess(inputs.op_string(config, 'pp_eval'))
  size = config.image_size

  # The ops after decoding, on decoded pixels (which every decoding op
  # passes through). Decoding runs eagerly, its warnings dropped.
  @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
  def prepare(pixels):
    example = preprocess.example_fn({'image': pixels, 'label': tf.constant(0)},
                                    tf.constant([0, 0], tf.int64))
    return example['image']

  def run(path: str) -> np.ndarray:
    data = _read(path)
    try:
      with native_noise_dropped():  # TensorFlow warns of each failure
        pixels = tf.io.decode_image(data, channels=3, expand_animations=False)
      image = prepare(pixels).numpy()
    except tf.errors.OpError as e:
      raise ValueError(f'cannot decode it as an image ({_cause(e)})') from None
    return _checked(image, size)
  return run


def _cause(error: Exception) -> str:
  """The line of a TensorFlow error that says what is wrong (its first
  lines are about graph nodes)."""
  text = re.sub(r'\[\[.*?\]\]|\{\{.*?\}\}|\[Op:.*?\]', '', str(error))
  lines = [line.strip() for line in text.splitlines() if line.strip()
           and not line.startswith(('Graph execution error', 'Detected at node'))]
  return (lines[-1] if lines else type(error).__name__)[:200]


def make_forward(model, mesh, with_attention: bool, num_prefix_tokens: int):
  """Jitted (params, images) -> probabilities-to-be (logits) and, with
  attention, the per-head and rollout maps; batches split over `mesh`."""
  def forward(params, images):
    if not with_attention:
      return model.apply({'params': params}, images), None, None
    logits, probs = attention_maps.apply_with_attention(model, params, images)
    heads, total = attention_maps.token_maps(probs, num_prefix_tokens)
    return logits, heads, total
  return jax.jit(forward, in_shardings=(NamedSharding(mesh, P()),
                                        NamedSharding(mesh, P('data'))))


def top_k(logits: np.ndarray, k: int, sigmoid: bool, labels: list[str]) -> list[dict]:
  logits = np.asarray(logits, np.float64)
  if sigmoid:
    probs = 1 / (1 + np.exp(-logits))
  else:
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
  order = np.argsort(-probs, kind='stable')[:k]
  return [{'label': labels[i], 'index': int(i), 'prob': float(probs[i])}
          for i in order]


def predict(loaded: saved_model.LoadedModel, paths: list[str], *, k: int = 5,
            batch_size: int = 64, attention_dir: str | None = None,
            log=print) -> list[dict]:
  """One record per path: {'image', 'top_k'} or {'image', 'error'}."""
  config = loaded.config
  model = build_model(config.model, len(loaded.labels))
  devices = np.array(jax.local_devices())
  mesh = Mesh(devices, ('data',))
  batch_size = -(-batch_size // devices.size) * devices.size
  prefix = prefix_tokens(config.model)
  forward = make_forward(model, mesh, attention_dir is not None, prefix)
  params = jax.device_put(loaded.params, NamedSharding(mesh, P()))
  preprocess = make_preprocess(config)
  sigmoid = config.get('loss') == 'sigmoid_xent'
  k = min(k, len(loaded.labels))
  if attention_dir:
    epath.Path(attention_dir).mkdir(parents=True, exist_ok=True)
  records, used_names = [], set()
  for start in range(0, len(paths), batch_size):
    chunk = paths[start:start + batch_size]
    images, ok = [], []
    for path in chunk:
      try:
        images.append(preprocess(path))
        ok.append(path)
      except ValueError as e:
        records.append({'image': path, 'error': str(e)})
        log(f'{path}: error: {e}')
    if not ok:
      continue
    batch = np.zeros((batch_size, *images[0].shape), np.float32)
    batch[:len(images)] = images
    logits, heads, total = jax.device_get(forward(params, batch))
    for i, path in enumerate(ok):
      record = {'image': path, 'top_k': top_k(logits[i], k, sigmoid, loaded.labels)}
      records.append(record)
      best = record['top_k'][0]
      if attention_dir:
        name = _unique_name(path, used_names)
        picture = attention_maps.render(
            images[i], attention_maps.as_grid(heads[i]),
            attention_maps.as_grid(total[i]),
            f'{os.path.basename(path)}: {best["label"]} ({best["prob"]:.2f})')
        (epath.Path(attention_dir) / name).write_bytes(picture)
      log(f'{path}  ' + '  '.join(f'{e["label"]} ({e["prob"]:.3f})'
                                  for e in record['top_k']))
  order = {path: i for i, path in enumerate(paths)}
  return sorted(records, key=lambda r: order[r['image']])


def _unique_name(path: str, used: set) -> str:
  stem = os.path.splitext(os.path.basename(path))[0]
  name, n = f'{stem}.png', 1
  while name in used:
    n += 1
    name = f'{stem}_{n}.png'
  used.add(name)
  return name


def write_records(records: list[dict], path: str, k: int) -> None:
  """One JSON object per line (.jsonl), or CSV columns image, error and
  label/index/prob for each rank (.csv)."""
  if path.endswith('.csv'):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(['image', 'error'] + [f'{c}_{r}' for r in range(1, k + 1)
                                          for c in ('label', 'index', 'prob')])
    for record in records:
      row = [record['image'], record.get('error', '')]
      for entry in record.get('top_k', []):
        row += [entry['label'], entry['index'], f'{entry["prob"]:.6g}']
      writer.writerow(row)
    text = out.getvalue()
  else:
    text = ''.join(json.dumps(r) + '\n' for r in records)
  write_atomically(path, text)


def main():
  # Orbax warns about metadata it does not need for a read-only restore.
  logging.set_verbosity(logging.ERROR)
  if _OUTPUT.value and not _OUTPUT.value.endswith(('.jsonl', '.csv')):
    raise UserError(f'--output={_OUTPUT.value!r}: expected a file ending in '
                    f'.jsonl or .csv.')
  if _TOP_K.value < 1:
    raise UserError(f'--top_k={_TOP_K.value}: expected a whole number >= 1.')
  loaded = saved_model.load(_MODEL.value, app.CONFIG.value)
  paths = list_images(_IMAGES.value)
  print(f'{loaded.description}: {loaded.config.model.get("name", "")} at '
        f'{loaded.config.image_size}px, {len(loaded.labels)} classes; '
        f'{len(paths)} images on {jax.local_device_count()} devices',
        flush=True)
  records = predict(loaded, paths, k=_TOP_K.value,
                    batch_size=_BATCH_SIZE.value,
                    attention_dir=_ATTENTION.value)
  failed = sum('error' in r for r in records)
  if failed == len(records):
    raise UserError(
        f'--images={_IMAGES.value!r}: none of its {failed} files could be read '
        f'or decoded (each is named above); expected images in a format '
        f'TensorFlow decodes: JPEG, PNG, GIF, BMP or WebP.')
  if _OUTPUT.value:
    write_records(records, _OUTPUT.value, min(_TOP_K.value, len(loaded.labels)))
    print(f'wrote {_OUTPUT.value}')
  if _ATTENTION.value:
    print(f'wrote {len(records) - failed} attention maps to {_ATTENTION.value}')
  print(f'{len(records) - failed} images predicted, {failed} unreadable')


if __name__ == '__main__':
  # Each host predicts its own files: no process group.
  app.run(main, required=('model', 'images'), distributed=False)
