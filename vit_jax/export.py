"""Export any trained model in a released or a PyTorch format.

  python -m vit_jax.export --model=/tmp/vit_demo --format=hf --out=/tmp/vit_demo_hf
  python -m vit_jax.export --model=DIR@STEP --format=big_vision --out=model.npz

--model is a workdir of vit_jax.train / vit_jax.finetune (`DIR`, or
`DIR@STEP`), an `.npz` (its config from the config.json beside it, or
--config) or an AugReg file name, as for vit_jax.predict. --format is one
of the exporters (vit_jax/formats/exporters.py): `vit_jax` (the official
release's .npz layout, what timm's npz loader reads), `big_vision`, `hf`
(a transformers ViTForImageClassification directory). The run's class
names go with the model.
"""

from absl import flags, logging
import jax
import numpy as np

from vit_jax import app
from vit_jax.data import inputs
from vit_jax.formats import exporters, saved_model
from vit_jax.runtime.user_errors import UserError


def define_flags() -> None:
  flags.DEFINE_string('model', None, 'A workdir (DIR or DIR@STEP), an .npz '
                      'file or an AugReg file name.')
  flags.DEFINE_string('format', 'vit_jax', 'One of: ' + ', '.join(exporters.EXPORTERS))
  flags.DEFINE_string('out', None, 'The file (.npz) or folder (hf) to write.')


def main():
  # Orbax warns about metadata it does not need for a read-only restore.
  logging.set_verbosity(logging.ERROR)
  name, out = flags.FLAGS.format, flags.FLAGS.out
  if name not in exporters.EXPORTERS:
    raise UserError(f'--format={name!r}: expected one of '
                    f'{", ".join(exporters.EXPORTERS)}.')
  loaded = saved_model.load(flags.FLAGS.model, app.CONFIG.value)
  refusal = exporters.refusal(name, loaded.config.model)
  if refusal:
    raise UserError(f'--format={name}: {loaded.description} cannot be '
                    f'exported so: {refusal}.')
  params = jax.tree.map(np.asarray, loaded.params)
  lost = exporters.export(name, params, loaded.config.model, out,
                          labels=loaded.labels,
                          image_size=loaded.config.image_size,
                          pp_eval=inputs.filled_op_string(loaded.config, 'pp_eval'))
  print(f'exported {out} ({name}) from {loaded.description}: '
        f'{loaded.config.model.get("name", "")}, {len(loaded.labels)} classes')
  if lost:
    print(f'warning: {lost}')


if __name__ == '__main__':
  define_flags()
  app.run(main, required=('model', 'out'), distributed=False)
