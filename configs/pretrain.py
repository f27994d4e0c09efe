"""Pre-training config: `configs/pretrain.py:model=B/16,dataset=imagenet21k`.

Defaults follow the ViT paper's pre-training recipe (Adam 0.9/0.999, batch
4096, warmup 10k steps then linear decay, weight decay 0.1 in the paper's
lr-coupled convention, clip 1.0, a representation layer of width D). Every
value is overridable as `--config.key=value`.

`dataset=` takes the names below, any TFDS name, `folder:PATH` or
`tfds_dir:PATH`. Values left at None are derived when the run starts
(vit_jax/config/derived.py), from the data where only the data can tell
(classes, splits, example count) and from the other values otherwise
(total_steps from epochs, warmup from total_steps, ...), so overriding one
value moves everything that follows from it.
"""

import ml_collections

from vit_jax.models.variants import get_model_config, parse_name
from vit_jax.training.sharding import DEFAULT_RULES

# name: (classes, train examples, train split, eval split). The example
# count sizes schedules given in epochs. ImageNet-21k is not in public TFDS:
# prepare it yourself (README) and point dataset= at it with --config.dataset.
# Other datasets get (None, None, 'train', 'auto'): read from the data.
DATASETS = {
    'imagenet2012': (1000, 1_281_167, 'train', 'validation'),
    'imagenet21k': (21843, 13_151_276, 'train', None),
    'cifar10': (10, 50_000, 'train', 'test'),
    'cifar100': (100, 50_000, 'train', 'test'),
    'oxford_iiit_pet': (37, 3_680, 'train', 'test'),
    'oxford_flowers102': (102, 2_040, 'train+validation', 'test'),
    'digits': (10, 1_437, 'train', 'test'),
    # Generated: the eval batches are the far end of the training stream.
    'synthetic': (10, 100_000, 'train', 'test'),
}
EPOCHS = {'imagenet2012': 300, 'imagenet21k': 90}
# The published warmup of the ImageNet recipes (ViT paper, appendix B.1;
# big_vision configs/vit_i1k.py and vit_i21k.py): a fixed step count, not a
# fraction of the schedule. Other datasets derive it from total_steps.
PUBLISHED_WARMUP_STEPS = {'imagenet2012': 10_000, 'imagenet21k': 10_000}
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
  args = parse_arg(arg, model='B/16', dataset='imagenet2012', batch_size='')
  num_classes, train_examples, train_split, eval_split = DATASETS.get(
      args['dataset'], (None, None, 'train', 'auto'))
  config = ml_collections.ConfigDict()
  config.seed = 0
  # A TFDS name, 'digits' (bundled), 'folder:PATH', 'tfds_dir:PATH',
  # 'arrayrecord:PATH' or 'synthetic'; see vit_jax/data/registry.py.
  config.dataset = args['dataset']
  # The dataset the class count and splits below were set for; when
  # --config.dataset names another, they are read from that data instead.
  config.defaults_dataset = args['dataset']
  config.data_dir = ml_collections.FieldReference(None, field_type=str)
  config.num_classes = ml_collections.FieldReference(num_classes, field_type=int)
  config.train_examples = ml_collections.FieldReference(train_examples,
                                                        field_type=int)
  config.image_size = 224
  config.train_split = ml_collections.FieldReference(train_split, field_type=str)
  # 'auto': validation, else test, else a held-out slice of train.
  config.eval_split = ml_collections.FieldReference(eval_split, field_type=str)
  # Op strings (vit_jax/data/ops.py); pixels end in [-1, 1]. {image_size}
  # and {resize_size} (image_size * 8/7) are filled in from the config.
  config.pp_train = 'decode_inception_crop({image_size})|flip_lr'
  config.pp_eval = 'decode|resize_small({resize_size})|central_crop({image_size})'
  config.shuffle_buffer = 250_000
  config.cache_raw = False   # keep encoded examples in host memory
  config.cache_eval = False  # keep preprocessed eval batches in host memory
  config.on_corrupt = 'stop'  # or 'skip' (counted as data/skipped_images)
  # arrayrecord: data (Grain): worker processes preprocessing whole host
  # batches (0: threads of the training process), and where shards in a
  # bucket are copied (None: ~/.cache/vit_jax/arrayrecord).
  config.data_workers = 0
  config.data_cache_dir = ml_collections.FieldReference(None, field_type=str)
  # Repeated augmentation (DeiT: 3): each image read is in the batch this
  # many times, each copy augmented on its own.
  config.repeated_augmentation = 1
  # None: 4096 (the paper's), or less for a small dataset.
  config.batch_size = ml_collections.FieldReference(
      int(args['batch_size']) if args['batch_size'] else None, field_type=int)
  config.eval_batch_size = ml_collections.FieldReference(None, field_type=int)
  config.epochs = EPOCHS.get(config.dataset, 100)
  config.total_steps = ml_collections.FieldReference(None, field_type=int)

  config.model = get_model_config(args['model'])
  config.model.representation_size = config.model.hidden_size
  if config.dataset == 'imagenet21k':
    config.model.dropout_rate = 0.1
    config.model.head_bias_init = -10.0

  config.loss = 'sigmoid_xent' if config.dataset == 'imagenet21k' else 'softmax_xent'
  config.label_smoothing = 0.0
  config.accum_steps = 1  # micro-batches per step (gradient accumulation)
  # Steps whose loss or gradient norm is NaN/Inf may leave the state as it
  # was, up to this many times; the next one stops the run.
  config.skip_nonfinite_updates = 0
  # When every checkpoint in the workdir is damaged: False stops with one
  # line, True starts the run over from step 0.
  config.restart_if_unrestorable = False
  # An exponential moving average of the parameters (e.g. DeiT's 0.99996),
  # kept in the checkpoint and evaluated beside them (eval/<name>_ema).
  config.ema_decay = ml_collections.FieldReference(None, field_type=float)

  config.optimizer = ml_collections.ConfigDict(dict(
      name='adam', b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=1.0,
      weight_decay=0.03 if config.dataset == 'imagenet21k' else 0.1,
      # big_vision's ViT recipes keep Adam's first moment in bfloat16
      # (optax mu_dtype): half its memory, the same step to within its
      # rounding. None keeps it in float32.
      first_moment_dtype=ml_collections.FieldReference('bfloat16', field_type=str),
      # Layer-wise lr decay for fine-tuning (e.g. 0.75): block i of L gets
      # decay^(L - i) of the rate, the embeddings decay^(L + 1), the head 1.
      layer_decay=ml_collections.FieldReference(None, field_type=float)))
  width = parse_name(config.model.name)[0]
  config.schedule = ml_collections.ConfigDict(dict(
      base_lr=BASE_LR.get(width, 1e-3),
      warmup_steps=ml_collections.FieldReference(
          PUBLISHED_WARMUP_STEPS.get(config.dataset), field_type=int),
      warmup_fraction=0.1, max_warmup_steps=10_000,
      decay_type='linear', end_lr=1e-5))

  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # The optimizer update whole on every data-parallel device. True splits
  # Adam's moments and the update over the data axis (ZeRO-1): 1/data of
  # the moments' memory and of the update's HBM traffic per device, but the
  # new float32 parameters then cross the interconnect every step besides
  # the gradient's all-reduce, a cost libtpu's step estimate leaves out
  # (`python -m vit_jax.aot` lists the collectives; `--search default`
  # compiles both).
  config.shard_optimizer_state = False
  # Flax's and big_vision's attention: logits and softmax in the computation
  # dtype (bfloat16 models: half the bytes of the attention core, within two
  # bfloat16 steps of exact attention); float32 models are unaffected.
  config.model.attention_logits_dtype = 'compute'
  config.sharding_rules = [list(rule) for rule in DEFAULT_RULES]

  config.log_steps = 50
  # Each eval on its own cadence (vit_jax/evaluators); None: a tenth of
  # total_steps. The held-out split is config.eval_split ('None' for none).
  config.evals = ml_collections.ConfigDict()
  config.evals.accuracy = ml_collections.ConfigDict(dict(
      type='classification', split=config.get_ref('eval_split'),
      every_steps=ml_collections.FieldReference(1000, field_type=int)))
  if config.dataset == 'imagenet2012':
    config.evals.real_accuracy = ml_collections.ConfigDict(dict(
        type='real', every_steps=config.evals.accuracy.get_ref('every_steps')))
  config.eval_batches = 10  # synthetic source only; real datasets use the split
  config.checkpoint_steps = 1000
  config.keep_checkpoints = 3
  config.keep_every = 10_000  # also keep every N-th step's checkpoint forever
  config.async_checkpoints = True
  return config
