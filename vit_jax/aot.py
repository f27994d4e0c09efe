"""`python -m vit_jax.aot`: the ahead-of-time compile of the train step for a TPU topology
(vit_jax/tools/aot.py)."""

from vit_jax.tools import aot

if __name__ == '__main__':
  aot.run()
