"""Pre-training config: `configs/pretrain.py:model=B/16,dataset=imagenet21k`.

Defaults follow the ViT paper's pre-training recipe (Adam 0.9/0.999, batch
4096, warmup 10k steps then linear decay, weight decay 0.1 in the paper's
lr-coupled convention, clip 1.0, a representation layer of width D). Every
value is overridable as `--config.key=value`.
"""

import ml_collections

from configs.models import get_model_config
from vit_jax.sharding import DEFAULT_RULES

# name: (classes, train examples) for sizing schedules in epochs.
DATASETS = {
    'imagenet2012': (1000, 1_281_167),
    'imagenet21k': (21843, 13_151_276),
    'cifar10': (10, 50_000),
    'cifar100': (100, 50_000),
    'synthetic': (10, 100_000),
}
EPOCHS = {'imagenet2012': 300, 'imagenet21k': 90}
# Peak learning rates of the paper (B and smaller 1e-3; L 8e-4; H 4e-4).
BASE_LR = {'L': 8e-4, 'H': 4e-4, 'g': 4e-4, 'G': 4e-4}


def parse_arg(arg: str | None, **defaults: str) -> dict[str, str]:
  """'model=B/16,dataset=cifar10' -> dict; unknown keys are an error."""
  values = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    if not sep or key not in defaults:
      raise ValueError(f'bad config argument {item!r}; expected key=value '
                       f'with key in {sorted(defaults)}.')
    values[key] = value
  return values


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, model='B/16', dataset='imagenet2012', batch_size='4096')
  if args['dataset'] not in DATASETS:
    raise ValueError(f'unknown dataset {args["dataset"]!r}; expected one of '
                     f'{sorted(DATASETS)}.')
  num_classes, train_examples = DATASETS[args['dataset']]
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = args['dataset']
  config.num_classes = num_classes
  config.image_size = 224
  config.batch_size = int(args['batch_size'])
  config.eval_batch_size = min(config.batch_size, 1024)
  epochs = EPOCHS.get(config.dataset, 100)
  config.total_steps = epochs * train_examples // config.batch_size

  config.model = get_model_config(args['model'])
  config.model.representation_size = config.model.hidden_size
  if config.dataset == 'imagenet21k':
    config.model.dropout_rate = 0.1
    config.model.head_bias_init = -10.0

  config.loss = 'sigmoid_xent' if config.dataset == 'imagenet21k' else 'softmax_xent'
  config.label_smoothing = 0.0
  config.accum_steps = 1  # micro-batches per step (gradient accumulation)

  config.optimizer = ml_collections.ConfigDict(dict(
      name='adam', b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=1.0,
      weight_decay=0.03 if config.dataset == 'imagenet21k' else 0.1,
      first_moment_dtype=ml_collections.FieldReference(None, field_type=str)))
  width = config.model.name.split('+')[-1].split('/')[0]
  config.schedule = ml_collections.ConfigDict(dict(
      base_lr=BASE_LR.get(width, 1e-3), warmup_steps=10_000,
      decay_type='linear', end_lr=1e-5))
  config.schedule.warmup_steps = min(10_000, config.total_steps // 10)

  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.sharding_rules = [list(rule) for rule in DEFAULT_RULES]

  config.log_steps = 50
  config.eval_steps = 1000
  config.eval_batches = 10  # synthetic source only; real datasets use the split
  config.checkpoint_steps = 1000
  config.keep_checkpoints = 3
  config.keep_every = 10_000  # also keep every N-th step's checkpoint forever
  config.async_checkpoints = True
  return config
