"""Pre-trained parameters onto a fine-tuning model: load, resize, swap.

`load_pretrained` reads an official `.npz` (vit_jax or big_vision layout,
local or gs://, or an AugReg file name), or an orbax checkpoint written by
our pre-training, and fits it to the target model's parameter tree:

* the position embedding is resized to the new patch grid (2D
  interpolation; the class-token row is kept as it is);
* the head is replaced by the target's fresh (zero) head;
* the representation layer (`pre_logits`) is kept or dropped by config;
* parameters matching a `dont_load` regex keep their fresh values.

Every other parameter must match by name and shape; anything else raises
one error that lists all mismatches. What was changed is logged.
"""

import logging
import re
from typing import Any, Callable, Sequence

from absl import logging as absl_logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp
import scipy.ndimage

from vit_jax.formats import npz as checkpoints
from vit_jax.models import vit
from vit_jax.models.variants import canonical_name
from vit_jax.runtime.paths import absolute_path

Params = Any
POSEMB = checkpoints.POSEMB
HEAD = ('head/kernel', 'head/bias')
AUGREG_BUCKET = 'gs://vit_models/augreg'
_AUGREG_NAME = re.compile(r'^(?:(?P<hybrid>R\w+)\+)?(?P<width>Ti|S|B|L|H)_(?P<patch>\d+)-i(1|21)k-')


def _linear_weights(new: int, old: int) -> np.ndarray:
  """(new, old) weights of corner-aligned linear interpolation: output i
  samples input position i * (old - 1) / (new - 1), so both ends map onto
  both ends (first-order spline zoom, the official resize). A single
  output samples position 0, the first corner, as the zoom does."""
  if old == 1:
    return np.ones((new, 1))
  if new == 1:
    return np.eye(1, old)
  positions = np.arange(new) * (old - 1) / (new - 1)
  low = np.clip(np.floor(positions).astype(int), 0, old - 2)
  frac = positions - low
  weights = np.zeros((new, old))
  weights[np.arange(new), low] = 1 - frac
  weights[np.arange(new), low + 1] += frac
  return weights


def resize_posemb(posemb: np.ndarray, new_grid: tuple[int, int], *,
                  num_prefix_tokens: int = 1,
                  old_grid: tuple[int, int] | None = None,
                  order: int = 1) -> np.ndarray:
  """(1, prefix + gh*gw, D) -> (1, prefix + new_h*new_w, D).

  `num_prefix_tokens` rows (the class token) are copied unchanged; the rest
  is the patch grid (square unless `old_grid` says otherwise), interpolated
  corner-aligned with a spline of `order` (1 = bilinear, the default; 0
  nearest; 3 cubic)."""
  posemb = np.asarray(posemb)
  prefix, grid = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
  if old_grid is None:
    side = int(round(np.sqrt(len(grid))))
    if side * side != len(grid):
      raise ValueError(
          f'position embedding has {len(grid)} grid tokens (after '
          f'{num_prefix_tokens} prefix tokens), not a square; pass old_grid.')
    old_grid = (side, side)
  if tuple(old_grid) == tuple(new_grid):
    return posemb
  grid = grid.reshape(*old_grid, -1).astype(np.float64)
  if order == 1:
    rows = _linear_weights(new_grid[0], old_grid[0])
    cols = _linear_weights(new_grid[1], old_grid[1])
    resized = np.einsum('ih,jw,hwd->ijd', rows, cols, grid)
  else:
    zoom = (new_grid[0] / old_grid[0], new_grid[1] / old_grid[1], 1)
    resized = scipy.ndimage.zoom(grid, zoom, order=order, grid_mode=False)
  resized = resized.reshape(1, new_grid[0] * new_grid[1], -1).astype(posemb.dtype)
  return np.concatenate([prefix, resized], axis=1)


def augreg_path(name: str) -> str:
  """An AugReg file name (with or without .npz) -> its path in the public
  bucket; other strings are returned as they are."""
  if '/' in name or not _AUGREG_NAME.match(name):
    return name
  return f'{AUGREG_BUCKET}/{name if name.endswith(".npz") else name + ".npz"}'


def augreg_model_name(path: str) -> str | None:
  """'.../B_16-i21k-300ep-...npz' -> 'B/16' (and 'R50+B/16' for hybrids)."""
  match = _AUGREG_NAME.match(path.rsplit('/', 1)[-1])
  if not match:
    return None
  name = f'{match["width"]}/{match["patch"]}'
  return f'{match["hybrid"]}+{name}' if match['hybrid'] else name


EMA_SUFFIX = ':ema'


def read_orbax_params(directory: str, step: int | None = None, *,
                      ema: bool = False) -> checkpoints.FlatParams:
  """Params of a pre-training workdir (or its checkpoints/ folder), at
  `step` or the newest step, as host arrays; with `ema`, the run's moving
  average of them (`config.ema_decay`)."""
  root = epath.Path(absolute_path(directory))
  try:
    if (root / 'checkpoints').is_dir():
      root = root / 'checkpoints'
    is_dir = root.is_dir()
  except Exception as e:  # pylint: disable=broad-except
    raise checkpoints.CheckpointReadError(
        f'checkpoint {directory!r} cannot be read ({type(e).__name__}); check '
        f'the path, the network and the credentials for the bucket.') from None
  if not is_dir:
    raise checkpoints.CheckpointNotFoundError(
        f'checkpoint {directory!r} does not exist; expected an .npz file, an '
        f'AugReg name or a workdir of vit_jax.train (DIR or DIR@STEP).')
  with ocp.CheckpointManager(root, item_names=('state', 'data')) as manager:
    steps = manager.all_steps()
    step = manager.latest_step() if step is None else step
  if step is None:
    raise checkpoints.CheckpointNotFoundError(
        f'no checkpoint in {str(root)!r}; expected step folders written by '
        f'vit_jax.train.')
  if step not in steps:
    raise checkpoints.CheckpointNotFoundError(
        f'no step {step} in {str(root)!r}; it holds steps {sorted(steps)}.')
  # Restored as host numpy arrays, so the saving run's devices and hosts
  # play no part (a bare restore would put the arrays back onto them).
  path = root / str(step) / 'state'
  checkpointer = ocp.PyTreeCheckpointer()
  # orbax warns that the item folder has no _CHECKPOINT_METADATA: a
  # CheckpointManager writes it one level up, in the step folder.
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    tree = checkpointer.metadata(path).item_metadata.tree
    state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        restore_args=jax.tree.map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)))
  finally:
    absl_logging.set_verbosity(verbosity)
  if ema and not state.get('ema_params'):
    raise checkpoints.CheckpointNotFoundError(
        f'the checkpoint of step {step} in {str(root)!r} holds no moving '
        f'average of the parameters (the run had no config.ema_decay); drop '
        f'{EMA_SUFFIX!r} to read its parameters.')
  return {k: np.asarray(v) for k, v in checkpoints.flatten_params(
      state['ema_params' if ema else 'params']).items()}


def read_pretrained(init_from: str) -> tuple[checkpoints.FlatParams, str]:
  """(flat params, description) from any supported source. An orbax step
  can be chosen with 'DIR@STEP', the moving average of a run's parameters
  with 'DIR:ema' or 'DIR@STEP:ema'."""
  path = augreg_path(init_from)
  if path.endswith('.npz'):
    return checkpoints.read_npz(path), path
  ema = path.endswith(EMA_SUFFIX)
  directory, _, step = path.removesuffix(EMA_SUFFIX).partition('@')
  return read_orbax_params(directory, int(step) if step else None,
                           ema=ema), path


def _check_class_token(*, has_class_token: bool, num_prefix_tokens: int,
                       source: str) -> None:
  """Raises CheckpointMismatchError when the checkpoint and the model
  disagree on having a class token (the position embedding cannot be
  mapped then)."""
  if has_class_token and not num_prefix_tokens:
    raise checkpoints.CheckpointMismatchError(
        f'checkpoint {source} has a class token (cls) but the model has none '
        f'(config.model.classifier "gap" or "map"); set '
        f'config.model.classifier="token".')
  if num_prefix_tokens and not has_class_token:
    raise checkpoints.CheckpointMismatchError(
        f'checkpoint {source} has no class token (cls): it pools without one '
        f'("gap" or "map"), but config.model.classifier is "token"; set '
        f'config.model.classifier to the checkpoint\'s pooling.')


def _check_square_grid(shape: tuple[int, ...], num_prefix_tokens: int,
                       source: str) -> None:
  grid = shape[1] - num_prefix_tokens
  if not checkpoints.is_square(grid):
    raise checkpoints.CheckpointMismatchError(
        f'checkpoint {source}: position embedding {tuple(shape)} has {grid} '
        f'grid rows after {num_prefix_tokens} class-token row(s), not a square '
        f'grid, so its height and width are unknown; resize it with '
        f'vit_jax.formats.transfer.resize_posemb(..., old_grid=(h, w)) and save the '
        f'checkpoint again.')


def fit_pretrained(flat: checkpoints.FlatParams, reference_params: Params, *,
                   source: str, stacked: bool, num_prefix_tokens: int,
                   new_grid: tuple[int, int] | None = None,
                   dont_load: Sequence[str] = (), posemb_order: int = 1,
                   log: Callable[[str], None] = logging.info
                   ) -> checkpoints.FlatParams:
  """The pre-trained values to load into a model whose parameter tree is
  `reference_params` (arrays or ShapeDtypeStructs), as a flat dict. Names
  absent from the result keep their fresh initialization: the head, names
  fully matching a `dont_load` regex, and a representation layer that the
  checkpoint lacks."""
  flat = checkpoints.to_model_layout(flat, stacked=stacked)
  reference = checkpoints.flatten_params(reference_params)
  if POSEMB in reference:
    flat = checkpoints.add_class_token_row(
        flat, tuple(reference[POSEMB].shape)[1], log)
  has_class_token = 'cls' in flat  # before dont_load may drop it
  patterns = [re.compile(p) for p in dont_load]

  def fresh(key):
    return key in HEAD or any(p.fullmatch(key) for p in patterns) or (
        key.startswith('pre_logits/') and key not in flat)
  for key in sorted(flat):
    if fresh(key) or (key.startswith('pre_logits/') and key not in reference):
      log(f'  not loaded: {key} {np.shape(flat[key])}')
      del flat[key]
  kept_fresh = sorted(k for k in reference if fresh(k))
  for key in kept_fresh:
    log(f'  initialized fresh: {key} {tuple(reference[key].shape)}')
  if POSEMB in flat and POSEMB in reference:
    old, new = np.shape(flat[POSEMB]), tuple(reference[POSEMB].shape)
    if old != new:
      _check_class_token(has_class_token=has_class_token,
                         num_prefix_tokens=num_prefix_tokens, source=source)
      _check_square_grid(old, num_prefix_tokens, source)
      if new_grid is None:  # square, from the model's token count
        side = int(round(np.sqrt(new[1] - num_prefix_tokens)))
        new_grid = (side, side)
      flat[POSEMB] = resize_posemb(flat[POSEMB], new_grid,
                                   num_prefix_tokens=num_prefix_tokens,
                                   order=posemb_order)
      log(f'  resized {POSEMB} {old} -> {new} (grid {new_grid}, spline '
          f'order {posemb_order})')
  wanted = checkpoints.unflatten_params(
      {k: v for k, v in reference.items() if k not in kept_fresh})
  return checkpoints.flatten_params(
      checkpoints.match_params(flat, wanted, source))


def load_pretrained(init_from: str, reference_params: Params, model_config,
                    dont_load: Sequence[str] = (), posemb_order: int = 1,
                    log: Callable[[str], None] = logging.info,
                    already_read: tuple[checkpoints.FlatParams, str] | None = None
                    ) -> checkpoints.FlatParams:
  """read_pretrained (unless `already_read` holds its result) +
  fit_pretrained for a model built from `model_config`; an AugReg file of
  another variant is refused by name."""
  flat, source = already_read or read_pretrained(init_from)
  from_name = augreg_model_name(source)
  if from_name and canonical_name(from_name) != canonical_name(model_config.name):
    raise checkpoints.CheckpointMismatchError(
        f'{source} is a {from_name} checkpoint but config.model is '
        f'{model_config.name}; use model={from_name}.')
  log(f'loading {source}:')
  return fit_pretrained(
      flat, reference_params, source=source,
      stacked=bool(model_config.get('scan')),
      num_prefix_tokens=vit.prefix_tokens(model_config),
      dont_load=dont_load, posemb_order=posemb_order, log=log)
