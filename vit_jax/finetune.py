"""Fine-tuning entry point: the pre-training loop started from a checkpoint.

  python -m vit_jax.finetune --config configs/finetune.py:model=B/16,dataset=cifar10 \\
      --config.init_from=gs://vit_models/imagenet21k/ViT-B_16.npz --workdir DIR

The checkpoint's position embedding is resized to the new resolution, the
head is replaced by a zero-initialized one for the new classes, and every
other parameter is loaded (see vit_jax/formats/transfer.py). Rerunning resumes from
the workdir's own checkpoint. At the end the model is written as an
official-layout .npz (`config.export`).
"""

from etils import epath
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from vit_jax import app, train
from vit_jax.data import inputs
from vit_jax.formats import exporters
from vit_jax.formats import run_record
from vit_jax.formats import transfer
from vit_jax.models import build_model
from vit_jax.runtime.user_errors import ConfigError


def pretrained_params(config, workdir=None, log=print):
  """(pretrained(setup), check(config)) for train.run. Unless `workdir`
  already holds checkpoints (a resume), the checkpoint is read now, so a
  missing or broken file stops the run before anything is written, and
  `check` fits it to the model's parameter shapes once the data has
  resolved the config (quietly, the result discarded), so a checkpoint of
  another model stops it there too."""
  if not config.init_from:
    raise ConfigError('config.init_from is empty: fine-tuning needs '
                      '--config.init_from=an .npz file, an AugReg name, or a '
                      'pre-training workdir (DIR or DIR@STEP).')

  resuming = workdir is not None and epath.Path(workdir, 'checkpoints').exists()
  already_read = None if resuming else transfer.read_pretrained(config.init_from)

  def fit(reference, log):
    return transfer.load_pretrained(
        config.init_from, reference, config.model,
        dont_load=tuple(config.dont_load), posemb_order=config.posemb_order,
        log=log, already_read=already_read)

  def check(resolved):
    if resuming:
      return
    model = build_model(resolved.model, resolved.num_classes)
    image = jnp.zeros((1, resolved.image_size, resolved.image_size, 3))
    fit(nn.unbox(jax.eval_shape(
        lambda: model.init(jax.random.key(0), image)['params'])), lambda _: None)

  return (lambda setup: fit(setup.state_shapes.params, log)), check


def export(params, config, workdir: str) -> None:
  """Gathers the (possibly sharded) params and writes them on process 0 in
  each of `config.export`'s formats: `finetuned.npz` (with
  `finetuned.labels.txt` beside it) for a released layout, `hf/` for
  transformers. The class names come from the run's labels.txt."""
  host = jax.tree.map(
      lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)),
      params)
  if jax.process_index() != 0:
    return
  labels = run_record.read_labels(f'{workdir}/{run_record.LABELS_FILE}')
  for name in exporters.names_in(config.export):
    path = f'{workdir}/{exporters.out_name(name)}'
    lost = exporters.export(name, host, config.model, path, labels=labels,
                            image_size=config.image_size,
                            pp_eval=inputs.filled_op_string(config, 'pp_eval'))
    print(f'exported {path} ({name})')
    if lost:
      print(f'warning: {lost}')


def main():
  config, workdir = app.CONFIG.value, app.WORKDIR.value
  pretrained, check = pretrained_params(config, workdir, app.console)
  train.run(pretrained=pretrained, check=check,
            finish=(lambda state: export(state.params, config, workdir))
            if config.export else None)


if __name__ == '__main__':
  app.run(main, required=('config', 'workdir'))
