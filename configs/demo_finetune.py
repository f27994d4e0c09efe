"""Fine-tunes the main job's model (configs/demo.py) on the digits at 16x16.

  python -m vit_jax.finetune --config configs/demo_finetune.py \\
      --config.init_from=/tmp/vit_demo --workdir /tmp/vit_finetune

The patch grid grows from 4x4 to 8x8, so the position embedding is resized,
and the head starts from zero: the fine-tuning recipe for 300 steps.
"""

from vit_jax.config.files import sibling

demo = sibling(__file__, 'demo')
finetune = sibling(__file__, 'finetune')


def get_config(arg: str | None = None):
  config = finetune.get_config(
      arg or f'model={demo.get_config().model.name},dataset=digits,batch_size=128')
  config.model.dropout_rate = 0.0
  config.image_size = 16
  # Translations on the native 8x8 grid, then upsampling.
  config.pp_train = 'pad(1)|random_crop(8)|resize(16)'
  config.pp_eval = 'resize(16)'
  config.shuffle_buffer = 2_000
  config.cache_raw = True
  config.cache_eval = True
  config.evals.accuracy.every_steps = 100
  config.log_steps = 100
  config.checkpoint_steps = 100
  return config
