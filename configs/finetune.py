"""Fine-tuning config: `configs/finetune.py:model=B/16,dataset=cifar10`.

Defaults are the official fine-tuning recipe: SGD with momentum 0.9 (bf16
accumulator), no weight decay, clip at global norm 1, batch 512, linear
warmup then cosine decay, 384 px, dropout 0, steps and learning rate per
dataset. `--config.init_from` is required: an official .npz (vit_jax or
big_vision layout, local or gs://), an AugReg file name, or a pre-training
workdir (optionally DIR@STEP).
"""

import ml_collections

from vit_jax.config.files import sibling

pretrain = sibling(__file__, 'pretrain')

# dataset: (steps, warmup steps, base lr). Other datasets (any TFDS name,
# folder:PATH, tfds_dir:PATH) train for FINETUNE_EPOCHS with WARMUP_FRACTION.
FINETUNE_EPOCHS = 10
WARMUP_FRACTION = 0.05
RECIPES = {
    'cifar10': (10_000, 500, 0.03),
    'cifar100': (10_000, 500, 0.03),
    'imagenet2012': (20_000, 500, 0.03),
    'oxford_iiit_pet': (500, 100, 0.03),
    'oxford_flowers102': (500, 100, 0.03),
    'digits': (300, 30, 0.03),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = pretrain.parse_arg(arg, model='B/16', dataset='cifar10',
                            batch_size='512')
  config = pretrain.get_config(
      f'model={args["model"]},dataset={args["dataset"]},'
      f'batch_size={args["batch_size"]}')
  steps, warmup, lr = RECIPES.get(config.dataset, (None, None, 0.03))
  if config.dataset == 'cifar10' and config.model.name == 'B/16':
    lr = 0.01  # the official B/16 CIFAR-10 run
  config.init_from = ''
  config.dont_load = ()   # regexes (full match) of parameters kept fresh
  config.posemb_order = 1  # spline order of the position-embedding resize
  # At the end: 'vit_jax'/'big_vision' write workdir/finetuned.npz in that
  # layout, 'hf' writes workdir/hf/ for transformers; 'vit_jax,hf' both;
  # '' nothing.
  config.export = 'vit_jax'
  config.image_size = 384
  config.pp_train = 'decode_inception_crop({image_size})|flip_lr'
  config.pp_eval = 'decode|resize({image_size})'
  # None (datasets without a recipe): FINETUNE_EPOCHS over the data.
  config.total_steps = steps
  config.epochs = FINETUNE_EPOCHS
  config.model.representation_size = None
  config.model.dropout_rate = 0.0
  config.model.head_bias_init = 0.0
  config.loss = 'softmax_xent'
  config.optimizer = ml_collections.ConfigDict(dict(
      name='sgd', momentum=0.9, first_moment_dtype='bfloat16',
      grad_clip_norm=1.0, weight_decay=0.0,
      # Layer-wise lr decay (e.g. 0.75, as BEiT / MAE fine-tune): block i of
      # L gets decay^(L - i) of the rate, the embeddings decay^(L + 1).
      layer_decay=ml_collections.FieldReference(None, field_type=float),
      freeze=()))  # regexes (full match) of parameters that stay fixed
  # The recipe's warmup as a fraction, so it follows --config.total_steps.
  config.schedule = ml_collections.ConfigDict(dict(
      base_lr=lr, warmup_steps=ml_collections.FieldReference(None, field_type=int),
      warmup_fraction=warmup / steps if steps else WARMUP_FRACTION,
      max_warmup_steps=ml_collections.FieldReference(None, field_type=int),
      decay_type='cosine', end_lr=0.0))
  # None: a tenth of total_steps (vit_jax/config/derived.py). Held-out
  # accuracy only, as the official fine-tuning runs report it.
  config.evals = {'accuracy': config.evals.accuracy}
  config.evals.accuracy.every_steps = None
  config.checkpoint_steps = ml_collections.FieldReference(None, field_type=int)
  config.keep_every = 0
  return config
