"""The README's main job: a small ViT pre-trained on the bundled digits.

scikit-learn ships 1,797 real 8x8 handwritten digits inside its wheel, so this
runs on a fresh offline machine: 1,437 for training, 360 held out. Patches of
2x2 pixels give 16 tokens plus the class token; translations of up to one
pixel are the augmentation (flips would turn digits into other digits).
"""

from vit_jax.config.files import sibling

fewshot = sibling(__file__, 'fewshot')
pretrain = sibling(__file__, 'pretrain')


def get_config(arg: str | None = None):
  config = pretrain.get_config(arg or 'model=nano/2,dataset=digits,batch_size=128')
  config.model.representation_size = None
  config.image_size = 8
  config.pp_train = 'pad(1)|random_crop(8)'
  config.pp_eval = ''
  config.eval_batch_size = 128
  config.shuffle_buffer = 2_000
  config.cache_raw = True
  config.cache_eval = True
  config.total_steps = 1500
  config.schedule.update(base_lr=3e-3, warmup_steps=150, decay_type='cosine',
                         end_lr=0.0)
  config.optimizer.weight_decay = 0.1
  # float32 moments: on a CPU a bfloat16 moment saves nothing worth its
  # rounding.
  config.optimizer.first_moment_dtype = None
  config.log_steps = 100
  config.evals.accuracy.every_steps = 500
  config.checkpoint_steps = 500
  config.keep_every = 0
  # Linear probes on the digits' frozen features, every 500 steps.
  config.evals.fewshot = fewshot.get_fewshot_section(
      {'digits': ('digits', 'train', 'test')}, every_steps=500)
  config.evals.fewshot.shots = (1, 5, 10)
  return config
