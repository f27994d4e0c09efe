"""`python -m vit_jax.benchmark`: train-step throughput and MFU
(vit_jax/tools/benchmark.py)."""

from vit_jax.tools import benchmark

if __name__ == '__main__':
  benchmark.run()
