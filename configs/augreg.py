"""AugReg pre-training: ViT on ImageNet-21k or ImageNet-1k with a named level
of augmentation and of regularization.

Source: Steiner et al., "How to train your ViT? Data, Augmentation, and
Regularization in Vision Transformers" (TMLR 2022, arXiv 2106.10270), and
big_vision's transcriptions of its recipes, `big_vision/configs/vit_i21k.py`
and `big_vision/configs/vit_i1k.py`; the regularization levels are those in
the names of the released checkpoints
(`B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0`), which
`init_from` loads by name. Published accuracies: per model, level and
epoch count in the paper's Figures 3-4 and in the vision_transformer
release's AugReg table (not transcribed here). This project has not trained
them itself: ImageNet does not fit the 2-core CPU machine it is built on.

  python -m vit_jax.train --workdir DIR --config \\
      configs/augreg.py:dataset=imagenet21k,model=B/16,aug=medium1,reg=wd_0.1-do_0.0-sd_0.0

`aug` (none, light1, light2, medium1, medium2, strong1, strong2) sets
RandAugment(2, magnitude) and mixup; the default is big_vision's choice for
the model. `reg` is a checkpoint name's `wd_W-do_D-sd_S`: weight decay 0.1 or
0.03 (the paper's convention: multiplied by the rate, as here), dropout and
stochastic depth 0.0 or 0.1. `epochs`: 30 or 300 on ImageNet-21k, 300 on
ImageNet-1k.

Common to both: batch 4096, Adam with a bfloat16 first moment, lr 1e-3, 10k
warmup steps then cosine, clip 1.0, inception crop + flip, sigmoid
cross-entropy. ImageNet-21k: 21,843 classes, head bias -10, a class-token
head without a representation layer (the released checkpoints'; big_vision's
current vit_i21k.py pools by average instead), trained on `train[51200:]`
and evaluated on `train[:25600]` and `train[25600:51200]` (big_vision's
`full` split is this project's `train`). ImageNet-1k: head bias -6.9, a
class-token head with a representation layer of width D, trained on
`train[:99%]`, evaluated on `train[:2%]`, the minival `train[99%:]`,
validation, ReaL and ImageNet-v2.
"""

import re

from vit_jax.config.files import sibling

pretrain = sibling(__file__, 'pretrain')

# Level -> (RandAugment magnitude or None, mixup Beta parameter or 0).
AUG_LEVELS = {
    'none': (None, 0.0),
    'light1': (0, 0.0),  # randaug(2,0): not nothing (invert, equalize, ...)
    'light2': (10, 0.2),
    'medium1': (15, 0.2),
    'medium2': (15, 0.5),
    'strong1': (20, 0.5),
    'strong2': (20, 0.8),
}
# big_vision's default level per model (a good average of 30 and 300 epochs).
DEFAULT_AUG = {
    'imagenet21k': {'Ti/16': 'none', 'S/32': 'none', 'S/16': 'light1',
                    'B/32': 'light2', 'B/16': 'light2', 'L/16': 'medium2'},
    'imagenet2012': {'Ti/16': 'light1', 'S/32': 'medium1', 'S/16': 'medium2',
                     'B/32': 'medium2', 'B/16': 'medium2', 'L/16': 'medium2'},
}
REG = re.compile(r'wd_(0\.1|0\.03)-do_(0\.0|0\.1)-sd_(0\.0|0\.1)')
EPOCHS = {'imagenet21k': ('30', '300'), 'imagenet2012': ('300',)}
I21K_HELD_OUT = 51_200


def get_config(arg: str | None = None):
  args = pretrain.parse_arg(arg, dataset='imagenet21k', model='B/16', aug='',
                            reg='wd_0.1-do_0.0-sd_0.0', epochs='300')
  dataset, model = args['dataset'], args['model']
  if dataset not in DEFAULT_AUG:
    raise ValueError(f'dataset={dataset}: AugReg pre-trains on '
                     f'{" or ".join(DEFAULT_AUG)}.')
  aug = args['aug'] or DEFAULT_AUG[dataset].get(model)
  if aug not in AUG_LEVELS:
    raise ValueError(f'aug={aug or ""}: expected one of {", ".join(AUG_LEVELS)}'
                     f'{"" if args["aug"] else f" (no default for {model})"}.')
  reg = REG.fullmatch(args['reg'])
  if not reg:
    raise ValueError(f'reg={args["reg"]}: expected wd_W-do_D-sd_S as in the '
                     f'released names, W 0.1 or 0.03, D and S 0.0 or 0.1.')
  if args['epochs'] not in EPOCHS[dataset]:
    raise ValueError(f'epochs={args["epochs"]}: AugReg trains {dataset} for '
                     f'{" or ".join(EPOCHS[dataset])} epochs.')

  config = pretrain.get_config(f'model={model},dataset={dataset},batch_size=4096')
  config.epochs = int(args['epochs'])
  magnitude, mixup = AUG_LEVELS[aug]
  config.pp_train = 'decode_inception_crop({image_size})|flip_lr' + (
      f'|randaug(2,{magnitude})' if magnitude is not None else '') + (
          f'|mixup({mixup})' if mixup else '')
  config.pp_eval = 'decode|resize_small({resize_size})|central_crop({image_size})'
  config.loss = 'sigmoid_xent'
  weight_decay, dropout, stochastic_depth = map(float, reg.groups())
  config.model.dropout_rate = dropout
  config.model.stochastic_depth = stochastic_depth
  config.optimizer.update(name='adam', b1=0.9, b2=0.999, eps=1e-8,
                          first_moment_dtype='bfloat16', grad_clip_norm=1.0,
                          weight_decay=weight_decay)
  config.schedule.update(base_lr=1e-3, warmup_steps=10_000,
                         decay_type='cosine', end_lr=0.0)
  config.log_steps = 50
  config.checkpoint_steps = 1000

  def evaluation(split, every_steps, **extra):
    return dict(type='classification', split=split, every_steps=every_steps,
                **extra)
  if dataset == 'imagenet21k':
    config.model.classifier = 'token'
    config.model.representation_size = None
    config.model.head_bias_init = -10.0
    config.train_split = f'train[{I21K_HELD_OUT}:]'
    config.train_examples = 13_151_276 - I21K_HELD_OUT
    config.evals = dict(
        test=evaluation(f'train[:{I21K_HELD_OUT // 2}]', 1000),
        val=evaluation(f'train[{I21K_HELD_OUT // 2}:{I21K_HELD_OUT}]', 1000))
  else:
    config.model.classifier = 'token'
    config.model.representation_size = config.model.hidden_size
    config.model.head_bias_init = -6.9
    config.train_split = 'train[:99%]'
    real = config.evals.real_accuracy
    config.evals = dict(
        train=evaluation('train[:2%]', 2500),
        minival=evaluation('train[99%:]', 2500),
        val=evaluation('validation', 2500),
        v2=evaluation('test', 2500, dataset='imagenet_v2'),
        real_accuracy={**real, 'every_steps': 2500})
  return config
