"""Parameter interop with the released `.npz` checkpoints.

The released files come in several layouts; all are mapped onto this
package's parameter tree:

* vit_jax pre-Linen numbering (`MultiHeadDotProductAttention_1`,
  `LayerNorm_2`, `MlpBlock_3` inside each encoder block) and Linen numbering
  (`MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`);
* the position embedding nested (`Transformer/posembed_input/pos_embedding`)
  or at the top level (`pos_embedding`, big_vision);
* big_vision's class-token layout, whose position embedding has no row for
  the class token (see `add_class_token_row`);
* big_vision's early MAP-head files with the head's parameters inlined at
  the top level (`probe`, ...) instead of under `MAPHead_0`;
* per-layer encoder blocks (`encoderblock_{i}`) or one stacked block
  (`encoderblock`, leading layer axis, big_vision's scanned encoder), in
  either direction, to match the model's `scan` setting;
* GroupNorm parameters of old hybrid files stored as (1, 1, 1, C);
* whole training checkpoints whose parameters sit under `params/` or
  `opt/target/`.

Paths may be local or any filesystem etils.epath reads (gs:// included).
"""

import io
import logging
import math
import re
from typing import Any, Callable, Mapping

import numpy as np
import flax.linen as nn
from etils import epath

from vit_jax.formats import run_record
from vit_jax.runtime.paths import write_atomically
from vit_jax.runtime.user_errors import UserError

Params = Any  # nested dict of arrays
FlatParams = dict[str, np.ndarray]

_PRE_LINEN_BLOCK_NAMES = {
    'MultiHeadDotProductAttention_1': 'MultiHeadDotProductAttention_0',
    'LayerNorm_2': 'LayerNorm_1',
    'MlpBlock_3': 'MlpBlock_0',
}
_LINEN_TO_PRE_LINEN = {v: k for k, v in _PRE_LINEN_BLOCK_NAMES.items()}
_BLOCK = re.compile(r'^(?P<prefix>.*Transformer/)encoderblock_(?P<index>\d+)/'
                    r'(?P<rest>.*)$')
_STACKED_BLOCK = re.compile(r'^(?P<prefix>.*Transformer/)encoderblock/'
                            r'(?P<rest>.*)$')
POSEMB = 'Transformer/posembed_input/pos_embedding'
_CLASS_TOKEN = 'cls'
# Children of big_vision's MAP head, once stored at the top level.
_INLINED_MAP_HEAD = ('probe', 'MlpBlock_0', 'MultiHeadDotProductAttention_0',
                     'LayerNorm_0')
_TRAINING_PREFIXES = ('params/', 'opt/target/')


class CheckpointMismatchError(UserError, ValueError):
  """A checkpoint whose parameter names or shapes differ from the model's."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
  """No checkpoint where the user pointed."""


class CheckpointReadError(UserError, ValueError):
  """A checkpoint file that exists (or may) but cannot be read."""


def flatten_params(tree: Mapping[str, Any], prefix: str = '') -> FlatParams:
  """Nested dict -> {'a/b/c': leaf}."""
  flat = {}
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, Mapping):
      flat.update(flatten_params(value, f'{path}/'))
    else:
      flat[path] = value
  return flat


def unflatten_params(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b/c': leaf} -> nested dict."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split('/')
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def read_npz(path: str) -> FlatParams:
  """All arrays of an `.npz` file as a flat dict (local or remote path)."""
  file = epath.Path(path)
  try:
    exists = file.exists()
    content = file.read_bytes() if exists else None
  except Exception as e:  # pylint: disable=broad-except
    # Remote filesystems raise their own types (TensorFlow's, fsspec's).
    raise CheckpointReadError(
        f'checkpoint {path!r} cannot be read ({type(e).__name__}: '
        f'{str(e).splitlines()[0] if str(e) else ""}); check the path, the '
        f'network and the credentials for the bucket, or copy the file to a '
        f'local disk.') from None
  if not exists:
    raise CheckpointNotFoundError(
        f'checkpoint {path!r} does not exist; check the path (local, or gs:// '
        f'with credentials for the bucket).')
  try:
    with np.load(io.BytesIO(content), allow_pickle=False) as data:
      return {key: data[key] for key in data.files}
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointReadError(
        f'checkpoint {path!r} is not a readable .npz of arrays '
        f'({type(e).__name__}: {e}); the file is truncated or of another '
        f'kind: download or export it again.') from None


def stack_encoder_blocks(flat: Mapping[str, Any]) -> FlatParams:
  """`encoderblock_{i}/...` per layer -> `encoderblock/...` stacked on axis 0."""
  per_layer: dict[tuple[str, str], dict[int, Any]] = {}
  out = {}
  for path, value in flat.items():
    match = _BLOCK.match(path)
    if match is None:
      out[path] = value
    else:
      key = (match['prefix'], match['rest'])
      per_layer.setdefault(key, {})[int(match['index'])] = value
  for (prefix, rest), layers in per_layer.items():
    indices = sorted(layers)
    if indices != list(range(len(indices))):
      raise CheckpointMismatchError(
          f'encoder blocks of {prefix}encoderblock_*/{rest} are numbered '
          f'{indices}; expected 0..{len(indices) - 1} with none missing.')
    out[f'{prefix}encoderblock/{rest}'] = np.stack(
        [np.asarray(layers[i]) for i in indices])
  return out


def unstack_encoder_blocks(flat: Mapping[str, Any]) -> FlatParams:
  """`encoderblock/...` stacked on axis 0 -> `encoderblock_{i}/...`."""
  out = {}
  for path, value in flat.items():
    match = _STACKED_BLOCK.match(path)
    if match is None:
      out[path] = value
      continue
    for i, layer in enumerate(np.asarray(value)):
      out[f'{match["prefix"]}encoderblock_{i}/{match["rest"]}'] = layer
  return out


def _strip_training_prefix(flat: FlatParams) -> FlatParams:
  for prefix in _TRAINING_PREFIXES:
    inner = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
    if inner:
      return inner
  return flat


def _rename_block_children(flat: FlatParams, names: Mapping[str, str]) -> FlatParams:
  out = {}
  for path, value in flat.items():
    parts = path.split('/')
    for i in range(1, len(parts)):
      if parts[i - 1].startswith('encoderblock'):
        parts[i] = names.get(parts[i], parts[i])
    out['/'.join(parts)] = value
  return out


def to_model_layout(flat: FlatParams, *, stacked: bool) -> FlatParams:
  """Any released layout -> this package's names (see module docstring)."""
  flat = _strip_training_prefix(dict(flat))
  if any('/MlpBlock_3/' in path for path in flat):
    flat = _rename_block_children(flat, _PRE_LINEN_BLOCK_NAMES)
  if 'pos_embedding' in flat:
    flat[POSEMB] = flat.pop('pos_embedding')
  if 'probe' in flat:
    flat = {(f'MAPHead_0/{k}' if k.split('/')[0] in _INLINED_MAP_HEAD else k): v
            for k, v in flat.items()}
  for path, value in flat.items():
    if (re.search(r'(^|/)gn[^/]*/(scale|bias)$', path)
        and np.ndim(value) == 4):
      flat[path] = np.reshape(value, (-1,))
  if stacked:
    return stack_encoder_blocks(flat)
  return unstack_encoder_blocks(flat)


def is_square(n: int) -> bool:
  return n >= 0 and math.isqrt(n) ** 2 == n


def add_class_token_row(flat: FlatParams, model_rows: int | None = None,
                        log: Callable[[str], None] = logging.info) -> FlatParams:
  """Gives a big_vision class-token file the position-embedding row of its
  class token.

  big_vision's ViT with `pool_type='tok'` adds the position embedding to
  the patch tokens and then prepends the class token, so its files store
  one row per patch beside `cls`. This package (like the official release)
  adds the embedding after prepending, with a row for the class token;
  a zero row there computes exactly what big_vision computed.

  The layout is told from the shapes: with `model_rows` (the model's row
  count) a file one row short is converted; otherwise, as in big_vision's
  own reader, a file whose rows minus one form a square grid already has
  the class row, and one whose rows form a square grid has not.
  """
  posemb = flat.get(POSEMB)
  if posemb is None or _CLASS_TOKEN not in flat:
    return flat
  _, rows, width = np.shape(posemb)
  if model_rows is not None and model_rows in (rows, rows + 1):
    convert = model_rows == rows + 1
  else:
    convert = is_square(rows) and not is_square(rows - 1)
  if convert:
    flat = dict(flat)
    flat[POSEMB] = np.concatenate(
        [np.zeros((1, 1, width), np.asarray(posemb).dtype), posemb], axis=1)
    log(f'  converted big_vision class-token layout: pos_embedding '
        f'(1, {rows}, {width}) has no row for the class token; prepended a '
        f'zero row -> (1, {rows + 1}, {width})')
  return flat


def _describe_mismatch(expected: Mapping[str, tuple], found: Mapping[str, tuple],
                       source: str) -> str:
  missing = sorted(set(expected) - set(found))
  unexpected = sorted(set(found) - set(expected))
  wrong = sorted(k for k in set(expected) & set(found)
                 if tuple(expected[k]) != tuple(found[k]))
  def summary(count_and_what, items):
    shown = '; '.join(items[:3]) + (f'; and {len(items) - 3} more'
                                    if len(items) > 3 else '')
    return f'{count_and_what}: {shown}'
  parts = []
  if missing:
    parts.append(summary(f'{len(missing)} parameters missing from the checkpoint',
                         [f'{k} {tuple(expected[k])}' for k in missing]))
  if unexpected:
    parts.append(summary(f'{len(unexpected)} checkpoint parameters not in the model',
                         [f'{k} {tuple(found[k])}' for k in unexpected]))
  if wrong:
    parts.append(summary(
        f'{len(wrong)} parameters with a different shape (model vs checkpoint)',
        [f'{k} {tuple(expected[k])} vs {tuple(found[k])}' for k in wrong]))
  if not parts:
    return ''
  return (f'checkpoint {source} does not match the model: ' + '. '.join(parts)
          + '. Build the model variant the checkpoint was saved from '
          '(config.model), or fine-tune with a head swap / position embedding '
          'resize.')


def match_params(flat: FlatParams, reference_params: Params,
                 source: str = '<in memory>') -> Params:
  """Checks a flat layout-converted dict against the model's tree (arrays or
  `jax.ShapeDtypeStruct`s) and returns it as that tree, cast to its dtypes.

  Raises CheckpointMismatchError listing every missing, unexpected and
  wrongly shaped parameter.
  """
  reference = flatten_params(reference_params)
  message = _describe_mismatch(
      {k: np.shape(v) for k, v in reference.items()},
      {k: np.shape(v) for k, v in flat.items()}, source)
  if message:
    raise CheckpointMismatchError(message)
  return unflatten_params(
      {k: np.asarray(flat[k], dtype=reference[k].dtype) for k in reference})


def _plain(tree: Params) -> Params:
  """Unboxes Flax metadata boxes (nn.Partitioned from `model.init`), so
  trees straight from init save and load like plain ones."""
  return nn.unbox(tree)


def load_npz_params(path: str, reference_params: Params,
                    log: Callable[[str], None] = logging.info) -> Params:
  """Loads a released (or exported) `.npz` into the model's parameter tree.

  `reference_params` is the model's tree, e.g. the `params` of
  `jax.eval_shape(model.init, ...)`, unboxed; whether it is scanned decides
  the encoder layout produced. Layout conversions that change values'
  shapes beyond renaming are reported through `log`.
  """
  return fit_params(read_npz(path), reference_params, source=repr(path),
                    log=log)


def fit_params(flat: FlatParams, reference_params: Params, *, source: str,
               log: Callable[[str], None] = logging.info) -> Params:
  """Flat parameters in any released layout (or ours) -> the model's tree;
  every name and shape must match (see load_npz_params)."""
  reference_params = _plain(reference_params)
  reference = flatten_params(reference_params)
  stacked = any(_STACKED_BLOCK.match(k) for k in reference)
  flat = to_model_layout(flat, stacked=stacked)
  model_posemb = reference.get(POSEMB)
  flat = add_class_token_row(
      flat, None if model_posemb is None else model_posemb.shape[1], log)
  return match_params(flat, reference_params, source=source)


LAYOUTS = ('vit_jax', 'big_vision')


def export_layout(params: Params, layout: str = 'vit_jax') -> FlatParams:
  """The model's tree as a flat dict in a released layout.

  'vit_jax': per-layer blocks, pre-Linen numbering, nested position embedding
  (what the official repo and timm's npz loader read). 'big_vision': per-layer
  blocks, Linen numbering, top-level `pos_embedding`.
  """
  if layout not in LAYOUTS:
    raise ValueError(f'unknown layout {layout!r}; expected one of {LAYOUTS}.')
  flat = unstack_encoder_blocks(
      {k: np.asarray(v) for k, v in flatten_params(_plain(params)).items()})
  if layout == 'vit_jax':
    return _rename_block_children(flat, _LINEN_TO_PRE_LINEN)
  if POSEMB in flat:
    flat['pos_embedding'] = flat.pop(POSEMB)
  return flat


def save_npz_params(params: Params, path: str, layout: str = 'vit_jax') -> None:
  """Writes the parameters as an `.npz` in a released layout."""
  buffer = io.BytesIO()
  np.savez(buffer, **export_layout(params, layout))
  write_atomically(path, buffer.getvalue())


# The exporter interface (vit_jax/formats/exporters.py).
OUT_NAME = 'finetuned.npz'


def export(params: Params, model_config, out: str, *,
           labels: list[str] | None, image_size: int, pp_eval: str | None,
           format_name: str) -> None:
  """`out` in layout `format_name`, its class names beside it
  (`run_record.labels_beside`)."""
  del model_config, image_size, pp_eval  # the layout holds the parameters
  save_npz_params(params, out, layout=format_name)
  if labels:
    run_record.write_labels(run_record.labels_beside(out), labels)
