"""Few-shot linear-probe config: `configs/fewshot.py:model=B/16,image_size=224`.

`dataset=NAME` (any TFDS name, folder:PATH or tfds_dir:PATH) probes that
dataset alone: its train split, and its validation or test split (else a
held-out tenth of train) for scoring.

  python -m vit_jax.fewshot --config configs/fewshot.py:model=B/16 \
      --config.init_from=gs://vit_models/imagenet21k/ViT-B_16.npz

`get_fewshot_section()` is also what a training config sets as
`config.evals.fewshot` to probe on a cadence during training.
"""

import ml_collections

from vit_jax.config.files import sibling
from vit_jax.models.variants import get_model_config

pretrain = sibling(__file__, 'pretrain')

# big_vision's default few-shot datasets: name -> (dataset, train, test).
DEFAULT_DATASETS = {
    'caltech101': ('caltech101', 'train', 'test'),
    'cars196': ('cars196', 'train', 'test'),
    'cifar100': ('cifar100', 'train', 'test'),
    'dtd': ('dtd', 'train', 'test'),
    'oxford_iiit_pet': ('oxford_iiit_pet', 'train', 'test'),
    'uc_merced': ('uc_merced', 'train[:1000]', 'train[1000:]'),
}
# Optional: the first 65,000 ImageNet train images hold >= 30 per class.
IMAGENET = {'imagenet2012': ('imagenet2012', 'train[:65000]', 'validation')}


def get_fewshot_section(datasets=None, every_steps: int = 10_000
                        ) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      type='fewshot',
      datasets=dict(DEFAULT_DATASETS if datasets is None else datasets),
      shots=(1, 5, 10, 25),
      seeds=3,
      l2s=(2.0 ** 10,),  # several values: the best on held-out train examples
      pp='decode|resize({image_size})',
      batch_size=256,
      data_dir=ml_collections.FieldReference(None, field_type=str),
      every_steps=every_steps,  # cadence as an eval during training
  ))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = pretrain.parse_arg(arg, model='B/16', image_size='224',
                            imagenet='False', dataset='')
  config = ml_collections.ConfigDict()
  config.init_from = ''  # .npz, AugReg name, workdir (DIR@STEP), or 'random'
  config.seed = 0
  config.model = get_model_config(args['model'])
  config.image_size = int(args['image_size'])
  datasets = dict(DEFAULT_DATASETS)
  if args['imagenet'] == 'True':
    datasets.update(IMAGENET)
  if args['dataset']:
    name = args['dataset'].rstrip('/').rsplit('/', 1)[-1].rsplit(':', 1)[-1]
    datasets = {name: (args['dataset'], 'train', 'auto')}
  config.fewshot = get_fewshot_section(datasets)
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.sharding_rules = pretrain.get_config().sharding_rules
  return config
