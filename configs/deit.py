"""DeiT without distillation: ViT-Ti/S/B at 224 px trained on ImageNet-1k
alone with strong augmentation and regularization.

Source: Touvron et al., "Training data-efficient image transformers &
distillation through attention" (ICML 2021, arXiv 2012.12877), Table 9
(the training hyper-parameters) and the defaults of facebookresearch/deit
`main.py`. Published top-1 on the ImageNet validation set at 224 px: DeiT-Ti
72.2%, DeiT-S 79.8%, DeiT-B 81.8%; DeiT-B's 300 epochs took 53 hours on one
node of 8 V100 GPUs (37 on two). This project has not trained them itself:
ImageNet does not fit the 2-core CPU machine it is built on.

  python -m vit_jax.train --config configs/deit.py:model=S/16 --workdir DIR

AdamW with the learning rate 5e-4 x batch / 512, weight decay 0.05 (PyTorch's
AdamW multiplies it by the rate, as this project does), no gradient
clipping, 5 warmup epochs then cosine to 1e-5, 300 epochs, label smoothing
0.1, stochastic depth 0.1, no dropout, random-resized crops of 8-100% of the
area and flips, RandAugment(2, 9) with magnitude noise 0.5, random erasing
0.25, mixup 0.8 or cutmix 1.0 (one of the two per batch), repeated
augmentation x3 and an EMA of the parameters (0.99996), evaluated beside
them. Biases, LayerNorm parameters, the position embedding and the class
token are not decayed (timm's rule). What differs from the PyTorch
original: RandAugment is this project's TensorFlow ops (DeiT uses timm's
PIL ops with its 'increasing' op set), crops and resizes are bilinear
(DeiT: bicubic), pixels are scaled to [-1, 1] (DeiT: ImageNet mean/std),
the warmup starts at 0 (DeiT: 1e-6), and the copies of repeated
augmentation stay on the process that read the image.
"""

from vit_jax.config.files import sibling

pretrain = sibling(__file__, 'pretrain')

MODELS = ('Ti/16', 'S/16', 'B/16')
EPOCHS = 300
WARMUP_EPOCHS = 5
IMAGENET_TRAIN = 1_281_167


def get_config(arg: str | None = None):
  args = pretrain.parse_arg(arg, model='B/16', batch_size='1024')
  if args['model'] not in MODELS:
    raise ValueError(f'model={args["model"]}: DeiT publishes {", ".join(MODELS)}; '
                     f'pass one of them.')
  batch_size = int(args['batch_size'])
  config = pretrain.get_config(
      f'model={args["model"]},dataset=imagenet2012,batch_size={batch_size}')
  config.epochs = EPOCHS

  config.model.representation_size = None
  config.model.dropout_rate = 0.0
  config.model.stochastic_depth = 0.1

  config.pp_train = ('decode_inception_crop({image_size},8,100)|flip_lr|'
                     'randaug(2,9,0.5)|value_range|random_erase(0.25)|'
                     'mixup(0.8)|cutmix(1.0)')
  config.pp_eval = 'decode|resize_small({resize_size})|central_crop({image_size})'
  config.repeated_augmentation = 3
  config.loss = 'softmax_xent'
  config.label_smoothing = 0.1
  config.ema_decay = 0.99996

  config.optimizer.update(name='adam', b1=0.9, b2=0.999, eps=1e-8,
                          grad_clip_norm=None, weight_decay=0.05)
  config.schedule.update(base_lr=5e-4 * batch_size / 512,
                         warmup_steps=WARMUP_EPOCHS * IMAGENET_TRAIN // batch_size,
                         decay_type='cosine', end_lr=1e-5)
  return config
