"""Few-shot probes of the main job's model on the bundled digits.

  python -m vit_jax.fewshot --config configs/demo_fewshot.py --config.init_from=/tmp/vit_demo
  python -m vit_jax.fewshot --config configs/demo_fewshot.py --config.init_from=random
"""

from vit_jax.config.files import sibling

demo = sibling(__file__, 'demo')
fewshot = sibling(__file__, 'fewshot')


def get_config(arg: str | None = None):
  del arg
  config = fewshot.get_config('model=nano/2,image_size=8')
  config.model = demo.get_config().model
  config.fewshot = demo.get_config().evals.fewshot
  return config
