"""Few-shot probes of the main job's model on the bundled digits.

  python -m vit_jax.fewshot --config configs/demo_fewshot.py --config.init_from=/tmp/vit_demo
  python -m vit_jax.fewshot --config configs/demo_fewshot.py --config.init_from=random
"""

from configs import demo, fewshot


def get_config(arg: str | None = None):
  del arg
  config = fewshot.get_config('model=Ti/16,image_size=8')
  config.model = demo.get_config().model
  config.fewshot = demo.get_config().fewshot
  return config
