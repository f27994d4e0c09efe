"""Compile the real train step ahead of time for a target topology.

  python -m vit_jax.aot --config configs/pretrain.py:model=L/16 --topology v5p:4x4x4 \\
      [--config.mesh.fsdp=16 --config.model.dtype=bfloat16 ...]

On any machine (this one needs no TPU: `pip install -e ".[tpu-aot]"` brings
the TPU compiler with libtpu), builds the train state's shapes and
shardings for the config, lowers and compiles the jitted train step for the
topology's devices, and prints what one chip would hold (arguments,
temporaries, outputs), whether that fits its memory, the compiler's FLOPs
and estimated step time, and the MFU that estimate implies. `cpu-N`
compiles for N host CPU devices instead. Nothing is allocated.
"""

import json
import os
import sys

from absl import flags
# Importing JAX does not start a backend yet, so cpu-N can still set the
# host device count below.
import jax
from jax.experimental import topologies
import jax.numpy as jnp

from vit_jax import app
from vit_jax.config import resolve
from vit_jax.models import flops as flops_lib
from vit_jax.runtime import devices as devices_lib
from vit_jax.training import sharding
from vit_jax.training.state import make_setup
from vit_jax.training.step import make_train_step

_TOPOLOGY = flags.DEFINE_string(
    'topology', None, 'TPU topology (v4:2x2x2, v5e:4x4, v5p:4x4x4, v6e:8x8) '
    'or cpu-N.')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON line instead of a table.')

GIB = devices_lib.GIB


def topology_devices(name: str):
  """Devices to compile for: a TPU topology description or N CPU devices."""
  if name.startswith('cpu-'):
    count = int(name[len('cpu-'):])
    if len(jax.devices('cpu')) < count:
      raise ValueError(f'{name}: only {len(jax.devices("cpu"))} CPU devices; '
                       f'the flag is applied at start-up, so run as '
                       f'python -m vit_jax.aot (not imported).')
    return jax.devices('cpu')[:count]
  # Compiling touches no TPU, so several compiles (tests, parallel sweeps)
  # may share the machine; libtpu otherwise takes a machine-wide lock.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  try:
    return topologies.get_topology_desc(
        platform='tpu', topology_name=name).devices
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f'cannot describe TPU topology {name!r} ({str(e).splitlines()[0]}). '
        f'It needs libtpu (pip install -e ".[tpu-aot]") and a name like '
        f'v4:2x2x2, v5e:4x4, v5p:4x4x4 or v6e:8x8.') from None


def compile_report(config, devices) -> dict:
  """Compiles the train step of `config` for `devices`; returns figures."""
  # Synthetic batches of the config's shapes: no data is read.
  resolve.resolve(config, None, log=lambda _: None, num_devices=len(devices))
  mesh = sharding.make_mesh(config.mesh, devices=devices)
  setup = make_setup(config, mesh)
  step = make_train_step(setup)
  batch_sharding = sharding.batch_sharding(mesh)
  size = config.image_size
  batch = {
      'images': jax.ShapeDtypeStruct((config.batch_size, size, size, 3),
                                     jnp.float32, sharding=batch_sharding),
      'labels': jax.ShapeDtypeStruct((config.batch_size,), jnp.int32,
                                     sharding=batch_sharding)}
  compiled = step.lower(setup.abstract_state, batch).compile()
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  kind = devices[0].device_kind
  chips = len(devices)
  total = (memory.argument_size_in_bytes + memory.output_size_in_bytes
           - memory.alias_size_in_bytes + memory.temp_size_in_bytes
           + memory.generated_code_size_in_bytes)
  spec = devices_lib.spec_of(kind)
  hbm = spec.memory_bytes if spec else None
  analytic = flops_lib.train_flops(
      config.model, size, config.num_classes) * config.batch_size / chips
  seconds = cost.get('optimal_seconds')
  if seconds is not None and seconds <= 0:
    seconds = None  # libtpu's estimate can come back negative: unusable
  peak = spec.peak_flops if spec else None
  # Roofline: the step takes at least its FLOPs at peak and its HBM traffic
  # at full bandwidth. Under nn.scan the compiler counts the layer body once,
  # so only unrolled models give a whole-step figure.
  flops, traffic = cost.get('flops'), cost.get('bytes accessed')
  bandwidth = spec.bandwidth if spec else None
  roofline = None
  if flops and traffic and peak and bandwidth and not config.model.get('scan'):
    roofline = max(flops / peak, traffic / bandwidth)
  report = dict(
      model=config.model.name, batch_size=config.batch_size, image_size=size,
      dtype=str(config.model.dtype), remat=config.model.remat_policy,
      device_kind=kind, chips=chips,
      mesh=dict(mesh.shape),
      argument_gib=memory.argument_size_in_bytes / GIB,
      temp_gib=memory.temp_size_in_bytes / GIB,
      output_gib=memory.output_size_in_bytes / GIB,
      alias_gib=memory.alias_size_in_bytes / GIB,
      total_gib=total / GIB, hbm_gib=hbm / GIB if hbm else None,
      fits=(total <= hbm) if hbm else None,
      xla_flops_per_chip=cost.get('flops'),
      analytic_flops_per_chip=analytic,
      hbm_bytes_accessed=traffic, scanned=bool(config.model.get('scan')),
      estimated_step_seconds=seconds,
      estimated_mfu=(analytic / seconds / peak) if seconds and peak else None,
      roofline_step_seconds=roofline,
      roofline_mfu=(analytic / roofline / peak) if roofline and peak else None)
  return report


def format_report(r: dict) -> str:
  def gib(x):
    return f'{x:.2f} GiB'
  lines = [
      f'{r["model"]}, batch {r["batch_size"]}, {r["image_size"]} px, '
      f'{r["dtype"]} on {r["chips"]} x {r["device_kind"]}, mesh {r["mesh"]}',
      f'  per chip: arguments {gib(r["argument_gib"])}, temporaries '
      f'{gib(r["temp_gib"])}, outputs {gib(r["output_gib"])} '
      f'(donated {gib(r["alias_gib"])}), total {gib(r["total_gib"])}']
  if r['hbm_gib']:
    lines.append(f'  memory: {r["total_gib"]:.2f} of {r["hbm_gib"]:.0f} GiB: '
                 + ('fits' if r['fits'] else 'DOES NOT FIT'))
  if r['xla_flops_per_chip']:
    lines.append(f'  FLOPs per chip and step: compiler {r["xla_flops_per_chip"]:.4g}'
                 f', analytic {r["analytic_flops_per_chip"]:.4g}')
    if r['scanned']:
      lines.append('  (scanned layers: the compiler counts the layer body once)')
  if r['estimated_step_seconds']:
    mfu = r['estimated_mfu']
    lines.append(f'  compiler-estimated step time {1e3 * r["estimated_step_seconds"]:.1f} ms'
                 + (f', MFU {100 * mfu:.1f}%' if mfu else ''))
  else:
    lines.append('  compiler-estimated step time: not available')
  if r['roofline_step_seconds']:
    lines.append(f'  roofline bound {1e3 * r["roofline_step_seconds"]:.1f} ms, '
                 f'MFU at most {100 * r["roofline_mfu"]:.1f}%')
  return '\n'.join(lines)


def main():
  report = compile_report(app.CONFIG.value, topology_devices(_TOPOLOGY.value))
  print(json.dumps(report) if _JSON.value else format_report(report))


def _preset_cpu_devices(argv) -> None:
  """cpu-N needs N host devices before JAX starts."""
  for i, arg in enumerate(argv):
    value = arg.split('=', 1)[1] if arg.startswith('--topology=') else (
        argv[i + 1] if arg == '--topology' and i + 1 < len(argv) else None)
    if value and value.startswith('cpu-'):
      os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                                 f' --xla_force_host_platform_device_count={value[4:]}')


def run() -> None:
  _preset_cpu_devices(sys.argv)
  # Compiling for a topology needs no other process.
  app.run(main, required=('config', 'topology'), distributed=False)


if __name__ == '__main__':
  run()
