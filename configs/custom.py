"""Your own images at small scale: `configs/custom.py:data=PATH,model=S/16`.

  python -m vit_jax.train --config configs/custom.py:data=/photos,model=S/16 \
      --workdir /tmp/my_run

PATH holds `train/<class>/<image>` (or is `arrayrecord:DIR`, such a
folder converted by `python -m vit_jax.data.convert`) and, if you have them, `validation/`
(or `val/`, `valid/`) or `test/` with the same class folders (otherwise a
class-stratified tenth of train, at most 10,000 images, is held out). Photos may have any size: training takes
random crops of 20-100% of the area resized to `image_size` plus flips;
evaluation resizes the shorter side and takes the central crop. The class
count, the example count, the batch size (a power of two up to a tenth of
the data) and the number of steps (`epochs` over the data) come from the
folder; every value can still be overridden with --config.key=value.
Config arguments: data (required), model (default S/16), image_size
(default 224).
"""

import ml_collections

from vit_jax.config.files import sibling

pretrain = sibling(__file__, 'pretrain')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = pretrain.parse_arg(arg, data='', model='S/16', image_size='224')
  if not args['data']:
    raise ValueError('configs/custom.py needs data=PATH: a folder with '
                     'train/<class>/<image> inside, e.g. '
                     'configs/custom.py:data=/photos,model=S/16.')
  data = args['data']
  dataset = data if data.startswith('arrayrecord:') else f'folder:{data}'
  config = pretrain.get_config(f'model={args["model"]},dataset={dataset}')
  config.image_size = int(args['image_size'])
  config.epochs = 30
  # Trained from scratch on a small dataset: no representation layer,
  # weight decay and warmup as for ImageNet-scale runs, cosine decay.
  config.model.representation_size = None
  config.schedule.update(base_lr=1e-3, warmup_fraction=0.1,
                         max_warmup_steps=None, decay_type='cosine', end_lr=0.0)
  config.pp_train = 'decode_inception_crop({image_size}, 20)|flip_lr'
  config.pp_eval = 'decode|resize_small({resize_size})|central_crop({image_size})'
  # Small data: keep the encoded images in memory and shuffle all of them.
  config.cache_raw = True
  config.cache_eval = True
  config.shuffle_buffer = 50_000
  config.log_steps = 10
  config.evals.accuracy.every_steps = None
  config.checkpoint_steps = ml_collections.FieldReference(None, field_type=int)
  config.keep_every = 0
  return config
