"""Train-step throughput and MFU on synthetic data already on the device.

  python -m vit_jax.benchmark --config configs/pretrain.py:model=B/16,batch_size=256 \\
      --config.model.dtype=bfloat16 [--steps 50] [--output_json out.json] [--peer timm]
      [--sweep_xla_flag=gpu | --sweep_xla_flag=--xla_gpu_... ...]

Reports the compile time, the median step time over `--steps` timed steps
(after warm-up steps that are not counted), images/s in total and per
device, achieved TFLOP/s and MFU from the analytic FLOPs (REFERENCE section
7), the compiler's FLOPs as a cross-check, and peak device memory where the
backend reports it. Needs no TensorFlow and no dataset.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import app
from vit_jax.config import resolve
from vit_jax.models import flops
from vit_jax.runtime import devices as devices_lib
from vit_jax.tools import step_profile
from vit_jax.training import sharding
from vit_jax.training.state import init_state, make_setup
from vit_jax.training.step import make_train_step

_STEPS = flags.DEFINE_integer('steps', 30, 'Timed steps.')
_WARMUP = flags.DEFINE_integer('warmup', 5, 'Untimed steps after compiling.')
_OUTPUT = flags.DEFINE_string('output_json', None, 'Also write the result to this file.')
_PEER = flags.DEFINE_enum(
    'peer', 'none', ['none', 'timm', 'transformers'],
    'Also time this PyTorch ViT of the same size, batch, resolution and '
    'precision in the same run (pip install -e ".[peers]").')
_PEER_COMPILE = flags.DEFINE_bool(
    'peer_compile', None, 'torch.compile the peer (default: on GPU only).')
_PROFILE = flags.DEFINE_integer(
    'profile_steps', 0, 'Then trace this many steps with jax.profiler and '
    'print where the time goes, per model part and per kind of XLA op.')
_SWEEP = flags.DEFINE_multi_string(
    'sweep_xla_flag', [],
    'Measure the effect of one XLA flag (repeatable; "gpu" or "cpu" stands '
    'for the candidates in SWEEP_CANDIDATES): the same benchmark runs in a '
    'fresh process without, then with each flag added to XLA_FLAGS.')

# XLA flags whose effect on the train step is measured with --sweep_xla_flag.
# None are set by default.
SWEEP_CANDIDATES = {
    'gpu': [
        # cuBLAS instead of Triton-generated kernels for matmuls.
        '--xla_gpu_enable_triton_gemm=false',
        # Schedules to overlap collectives and copies with compute.
        '--xla_gpu_enable_latency_hiding_scheduler=true',
        # Launch fusions one by one instead of replaying CUDA graphs.
        '--xla_gpu_enable_command_buffer=',
        # cuDNN's LayerNorm kernels instead of XLA fusions.
        '--xla_gpu_enable_cudnn_layer_norm=true',
        '--xla_gpu_enable_highest_priority_async_stream=true',
    ],
    'cpu': [
        # Eigen instead of YNNPACK for dots and the elementwise work fused
        # into them.
        '--xla_cpu_experimental_ynn_fusion_type=',
        '--xla_cpu_use_onednn=true',
    ],
}


def benchmark(config, steps: int, warmup: int, profile_steps: int = 0) -> dict:
  # Batches are generated on the device: no data is read.
  resolve.resolve(config, None, log=lambda _: None)
  setup = make_setup(config)
  mesh = setup.mesh
  state = init_state(setup, config.seed)
  step_fn = make_train_step(setup)
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
  out = None

  def run_step():
    nonlocal state, out
    state, out = compiled(state, batch)
    jax.block_until_ready(out)

  for _ in range(warmup):
    run_step()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    run_step()
    times.append(time.perf_counter() - start)
  profile = (step_profile.profile_steps(compiled, run_step, profile_steps)
             if profile_steps else None)
  step_seconds = float(np.median(times))
  devices = mesh.size
  analytic = flops.train_flops(config.model, size,
                               config.num_classes) * config.batch_size
  spec = devices_lib.spec_of(jax.devices()[0].device_kind)
  peak = spec.peak_flops if spec else None
  memory = jax.local_devices()[0].memory_stats() or {}
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
      loss=float(jnp.asarray(out['loss'])),
      **({'profile': profile} if profile else {}))


def sweep_xla_flags(candidates: list[str], argv: list[str]) -> list[dict]:
  """Reruns this benchmark (argv, less the sweep and peer flags) in fresh
  processes: once as it is, then with each candidate appended to XLA_FLAGS,
  which only takes effect before a backend starts."""
  expanded = []
  for flag in candidates:
    expanded.extend(SWEEP_CANDIDATES.get(flag, [flag]))
  passed = [a for a in argv[1:] if not a.startswith(
      ('--sweep_xla_flag', '--peer', '--output_json'))]
  rows = []
  for flag in [None] + expanded:
    with tempfile.TemporaryDirectory() as tmp:
      out = os.path.join(tmp, 'result.json')
      env = dict(os.environ)
      if flag:
        env['XLA_FLAGS'] = f'{env.get("XLA_FLAGS", "")} {flag}'.strip()
      done = subprocess.run(
          [sys.executable, '-m', 'vit_jax.benchmark', *passed,
           f'--output_json={out}'], env=env, capture_output=True, text=True,
          check=False)
      if done.returncode or not os.path.exists(out):
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ['']
        rows.append(dict(flag=flag, error=tail[0][:200]))
        continue
      with open(out) as f:
        result = json.load(f)
    rows.append(dict(flag=flag, step_seconds_median=result['step_seconds_median'],
                     images_per_second=result['images_per_second'],
                     peak_memory_gib=result['peak_memory_gib']))
  base = rows[0].get('step_seconds_median')
  for row in rows:
    if base and 'step_seconds_median' in row:
      row['speedup'] = base / row['step_seconds_median']
  return rows


def main():
  config = app.CONFIG.value
  if _SWEEP.value:
    rows = sweep_xla_flags(_SWEEP.value, sys.argv)
    for row in rows:
      flag = row['flag'] or '(no extra flag)'
      if 'error' in row:
        print(f'{flag:<56}  failed: {row["error"]}')
      else:
        print(f'{flag:<56}  {row["step_seconds_median"]:.4g} s  '
              f'{row["images_per_second"]:.4g} img/s  x{row["speedup"]:.3f}')
    if _OUTPUT.value:
      with open(_OUTPUT.value, 'w') as f:
        json.dump(rows, f, indent=1)
    return
  result = benchmark(config, _STEPS.value, _WARMUP.value, _PROFILE.value)
  profile = result.pop('profile', None)
  if _PEER.value != 'none':
    # The peers need the optional PyTorch extra (.[peers]).
    from vit_jax.tools import peer_benchmark  # pylint: disable=g-import-not-at-top
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
  if not app.is_main_process():
    return  # every process took part; one reports
  width = max(len(k) for k in result)
  for key, value in result.items():
    shown = f'{value:.4g}' if isinstance(value, float) else value
    print(f'{key:<{width}}  {shown}')
  if profile:
    print(step_profile.format_summary(profile))
    result['profile'] = profile
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as f:
      json.dump(result, f, indent=1)


def run() -> None:
  app.run(main)


if __name__ == '__main__':
  run()
