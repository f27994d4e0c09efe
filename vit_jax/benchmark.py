"""Train-step throughput and MFU on synthetic data already on the device.

  python -m vit_jax.benchmark --config configs/pretrain.py:model=B/16,batch_size=256 \\
      --config.model.dtype=bfloat16 [--steps 50] [--output_json out.json] [--peer timm]

Reports the compile time, the median step time over `--steps` timed steps
(after warm-up steps that are not counted), images/s in total and per
device, achieved TFLOP/s and MFU from the analytic FLOPs (REFERENCE section
7), the compiler's FLOPs as a cross-check, and peak device memory where the
backend reports it. Needs no TensorFlow and no dataset.
"""

import json
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import metrics, sharding, trainer
from vit_jax.train import _CONFIG  # pylint: disable=g-bad-import-order

_STEPS = flags.DEFINE_integer('steps', 30, 'Timed steps.')
_WARMUP = flags.DEFINE_integer('warmup', 5, 'Untimed steps after compiling.')
_OUTPUT = flags.DEFINE_string('output_json', None, 'Also write the result to this file.')
_PEER = flags.DEFINE_enum(
    'peer', 'none', ['none', 'timm', 'transformers'],
    'Also time this PyTorch ViT of the same size, batch, resolution and '
    'precision in the same run (pip install -e ".[peers]").')
_PEER_COMPILE = flags.DEFINE_bool(
    'peer_compile', None, 'torch.compile the peer (default: on GPU only).')


def benchmark(config, steps: int, warmup: int) -> dict:
  setup = trainer.make_setup(config)
  mesh = setup.mesh
  state = trainer.init_state(setup, config.seed)
  step_fn = trainer.make_train_step(setup)
  rng = np.random.default_rng(0)
  size = config.image_size
  host = {'images': rng.uniform(-1, 1, (config.batch_size, size, size, 3)
                                ).astype(np.float32),
          'labels': rng.integers(0, config.num_classes, config.batch_size
                                 ).astype(np.int32)}
  batch = sharding.global_batch(
      {k: v[:config.batch_size // jax.process_count()] for k, v in host.items()},
      mesh)
  start = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile()
  compile_seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  for _ in range(warmup):
    state, out = compiled(state, batch)
  jax.block_until_ready(out)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, out = compiled(state, batch)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - start)
  step_seconds = float(np.median(times))
  devices = mesh.size
  analytic = 3 * metrics.vit_forward_flops(config.model, size,
                                           config.num_classes) * config.batch_size
  peak = metrics.peak_flops_per_device()
  memory = jax.devices()[0].memory_stats() or {}
  return dict(
      model=config.model.name, batch_size=config.batch_size, image_size=size,
      dtype=str(config.model.dtype), remat=config.model.remat_policy,
      scan=bool(config.model.scan),
      device=jax.devices()[0].device_kind, devices=devices,
      jax=jax.__version__, compile_seconds=compile_seconds,
      step_seconds_median=step_seconds,
      step_seconds_min=float(np.min(times)),
      images_per_second=config.batch_size / step_seconds,
      images_per_second_per_device=config.batch_size / step_seconds / devices,
      analytic_tflops_per_step=analytic / 1e12,
      compiler_tflops_per_step_per_device=(cost or {}).get('flops', 0) / 1e12,
      achieved_tflops_per_device=analytic / step_seconds / devices / 1e12,
      mfu=(analytic / step_seconds / devices / peak) if peak else None,
      peak_memory_gib=memory.get('peak_bytes_in_use', 0) / 2**30 or None,
      loss=float(jnp.asarray(out['loss'])))


def main(argv):
  del argv
  config = _CONFIG.value
  result = benchmark(config, _STEPS.value, _WARMUP.value)
  if _PEER.value != 'none':
    from vit_jax import peer_benchmark  # pylint: disable=g-import-not-at-top
    on_gpu = jax.devices()[0].platform == 'gpu'
    compile_model = on_gpu if _PEER_COMPILE.value is None else _PEER_COMPILE.value
    result.update(peer_benchmark.time_peer(
        _PEER.value, config.model.name, batch_size=config.batch_size,
        image_size=config.image_size, num_classes=config.num_classes,
        steps=_STEPS.value, warmup=_WARMUP.value,
        bfloat16=str(config.model.dtype) == 'bfloat16',
        compile_model=compile_model))
    result['speedup_vs_peer'] = (result['peer_step_seconds_median'] /
                                 result['step_seconds_median'])
  width = max(len(k) for k in result)
  for key, value in result.items():
    shown = f'{value:.4g}' if isinstance(value, float) else value
    print(f'{key:<{width}}  {shown}')
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
