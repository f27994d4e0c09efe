"""`python -m vit_jax.summary`: a model variant's size and output
(vit_jax/tools/model_summary.py)."""

from vit_jax.tools import model_summary

if __name__ == '__main__':
  model_summary.run()
