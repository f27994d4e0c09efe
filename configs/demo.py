"""The README's main job: a small ViT pre-trained on CPU in a few minutes.

Synthetic data (class templates plus noise, see vit_jax/data/synthetic.py),
so it needs no download.
"""

from configs import pretrain


def get_config(arg: str | None = None):
  config = pretrain.get_config(arg or 'model=Ti/16,dataset=synthetic,batch_size=64')
  config.image_size = 32
  config.model.update(patch_size=(4, 4), hidden_size=64, mlp_dim=128,
                      num_heads=4, num_layers=4, representation_size=None)
  config.total_steps = 300
  config.schedule.update(base_lr=1e-3, warmup_steps=30, decay_type='cosine',
                         end_lr=0.0)
  config.optimizer.weight_decay = 0.1
  config.log_steps = 25
  config.eval_steps = 100
  config.eval_batches = 8
  config.checkpoint_steps = 100
  config.keep_every = 0
  return config
