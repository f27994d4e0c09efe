"""The train-step benchmark runs on synthetic data and reports consistent
figures (timings themselves are never asserted)."""

from tiny_training import tiny_config
from vit_jax import benchmark, metrics


def test_benchmark_reports_consistent_figures():
  config = tiny_config({})
  result = benchmark.benchmark(config, steps=3, warmup=1)
  assert result['devices'] == 1 and result['batch_size'] == 16
  assert result['step_seconds_min'] <= result['step_seconds_median']
  assert abs(result['images_per_second'] * result['step_seconds_median'] - 16) < 1e-6
  analytic = 3 * metrics.vit_forward_flops(config.model, 16, 10) * 16 / 1e12
  assert abs(result['analytic_tflops_per_step'] - analytic) < 1e-12
  # The compiler's count agrees with the analytic one within 15% even for
  # this tiny model (norms, softmax and the optimizer are not in it).
  assert abs(result['compiler_tflops_per_step_per_device'] / analytic - 1) < 0.15
