"""big_vision's plain ViT-S/16 baseline on ImageNet-1k, field for field.

Source: Beyer, Zhai, Kolesnikov, "Better plain ViT baselines for
ImageNet-1k" (arXiv 2205.01580) and its config in big_vision,
`big_vision/configs/vit_s16_i1k.py`. Published top-1 on the ImageNet
validation set: 76.5% after 90 epochs (6-7 h on a TPU v3-8), about 78.5%
after 150 and about 80.0% after 300. This project has not trained it
itself: ImageNet does not fit the 2-core CPU machine it is built on.

  python -m vit_jax.train --config configs/vit_s16_i1k.py:epochs=90 --workdir DIR

What differs from configs/pretrain.py: global-average pooling instead of a
class token, a fixed 2D sin-cos position embedding, batch 1024, cosine decay
after a 10k-step warmup, Adam with a bfloat16 first moment, RandAugment(2,
10) and mixup (Beta parameter 0.2), training on the first 99% of the train
split and evaluating on the last 1% (minival) as well as on the validation
split, its ReaL labels and ImageNet-v2 (`imagenet_v2` in TFDS; skipped with
a warning where it is not prepared). The weight decay is big_vision's 1e-4,
applied decoupled from the learning rate; in this project's convention
(multiplied by the rate, as in the ViT paper) that is 1e-4 / 1e-3 = 0.1.
"""

from vit_jax.config.files import sibling

pretrain = sibling(__file__, 'pretrain')

EPOCHS = ('90', '150', '300')


def get_config(arg: str | None = None):
  args = pretrain.parse_arg(arg, epochs='90')
  if args['epochs'] not in EPOCHS:
    raise ValueError(f'epochs={args["epochs"]}: the published schedules are '
                     f'{", ".join(EPOCHS)} epochs; pass one of them.')
  config = pretrain.get_config('model=S/16,dataset=imagenet2012,batch_size=1024')
  config.epochs = int(args['epochs'])
  config.train_split = 'train[:99%]'
  config.cache_raw = True  # big_vision's too: up to 120 GB of host memory
  config.shuffle_buffer = 250_000

  config.model.classifier = 'gap'
  config.model.posemb = 'sincos2d'
  config.model.representation_size = config.model.hidden_size  # rep_size=True
  config.model.dropout_rate = 0.0

  config.pp_train = ('decode_inception_crop({image_size})|flip_lr|randaug(2,10)'
                     '|mixup(0.2)')
  config.pp_eval = 'decode|resize_small({resize_size})|central_crop({image_size})'
  config.loss = 'softmax_xent'
  config.label_smoothing = 0.0

  config.optimizer.update(name='adam', b1=0.9, b2=0.999, eps=1e-8,
                          first_moment_dtype='bfloat16', grad_clip_norm=1.0,
                          weight_decay=0.1)
  config.schedule.update(base_lr=1e-3, warmup_steps=10_000,
                         decay_type='cosine', end_lr=0.0)

  config.log_steps = 50
  config.checkpoint_steps = 1000
  config.evals.accuracy.split = 'train[99%:]'  # minival, logged as eval/minival
  config.evals.minival = config.evals.accuracy
  del config.evals['accuracy']
  config.evals.minival.every_steps = 2500
  config.evals.val = dict(type='classification', split='validation',
                          every_steps=2500)
  config.evals.real_accuracy.every_steps = 2500
  config.evals.v2 = dict(type='classification', dataset='imagenet_v2',
                         split='test', every_steps=2500)
  return config
