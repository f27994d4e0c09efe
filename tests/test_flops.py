"""The analytic FLOP model against the published per-image figures at
224 px and 1,000 classes (forward = 2 x multiply-adds; the ViT paper's
compute table and timm's model profiles agree on them)."""

import pytest

from vit_jax.models import flops
from vit_jax.models.variants import get_model_config


@pytest.mark.parametrize('name,gflops', [
    ('Ti/16', 2.5), ('S/16', 9.2), ('B/16', 35.1), ('L/16', 123.1),
    ('H/14', 334.6)])
def test_forward_flops_match_the_published_figures(name, gflops):
  got = flops.forward_flops(get_model_config(name), 224, 1000) / 1e9
  assert got == pytest.approx(gflops, abs=0.05)


def test_a_training_step_costs_three_forward_passes():
  # 105.4 GFLOP per B/16 training image: the paper's 224 EFLOPs for 7
  # epochs of JFT-300M.
  b16 = get_model_config('B/16')
  assert flops.train_flops(b16, 224, 1000) / 1e9 == pytest.approx(105.4, abs=0.1)
  assert flops.train_flops(b16, 224, 1000) == 3 * flops.forward_flops(b16, 224, 1000)


def test_tokens_follow_the_model_prefix_tokens():
  token, gap = get_model_config('B/16'), get_model_config('B/16')
  gap.classifier = 'gap'
  # One token fewer: (4 D^2 + 2 T D + 2 D M) multiply-adds per layer less
  # the attention cross terms of one token, times 2 for FLOPs.
  difference = (flops.forward_flops(token, 224, 1000)
                - flops.forward_flops(gap, 224, 1000))
  d, m, layers, t = 768, 3072, 12, 197
  per_layer_macs = lambda n: 4 * n * d * d + 2 * n * n * d + 2 * n * d * m
  assert difference == 2 * layers * (per_layer_macs(t) - per_layer_macs(t - 1))
