"""Compile the real train step ahead of time for a target topology.

  python -m vit_jax.aot --config configs/pretrain.py:model=L/16 --topology v5p:4x4x4 \\
      [--config.mesh.fsdp=16 --config.model.dtype=bfloat16 ...]
  python -m vit_jax.aot --config configs/pretrain.py:model=B/16,batch_size=256 \\
      --config.model.dtype=bfloat16 --topology h100

On any machine (this one needs no TPU or GPU: `pip install -e ".[tpu-aot]"`
brings the TPU compiler with libtpu, `pip install -e ".[gpu-aot]"` JAX's
CUDA plugin with its compiler and cuDNN), builds the train state's shapes and
shardings for the config, lowers and compiles the jitted train step for the
topology's devices, and prints what one chip would hold (arguments,
temporaries, outputs), whether that fits its memory, the compiler's FLOPs
and estimated step time, and the MFU that estimate implies. For a GPU
(`h100`, `h200`, `a100`: one GPU, described by the target-config file of
that name in vit_jax/tools/gpu_targets/) it also lists the kernels the
compiler chose (cuDNN fused attention forward and backward, cuBLASLt and
cuBLAS GEMMs, Triton kernels, fusions). Without autotuning on a device,
Triton GEMM tiling cannot be chosen, so GPU compiles here use cuBLASLt for
every matmul, unlike a compile on the GPU itself. `cpu-N` compiles for N
host CPU devices instead. Nothing is allocated.
"""

import importlib.util
import json
import os
import re
import sys

from absl import flags
# Importing JAX does not start a backend yet, so cpu-N can still set the
# host device count below.
import jax
from jax.experimental import topologies
import jax.numpy as jnp
import numpy as np

from vit_jax import app
from vit_jax.config import resolve
from vit_jax.models import flops as flops_lib
from vit_jax.models.attention import resolve_implementation
from vit_jax.runtime import devices as devices_lib
from vit_jax.runtime.user_errors import UserError
from vit_jax.tools import aot_search
from vit_jax.training import sharding
from vit_jax.training.state import make_setup
from vit_jax.training.step import make_train_step

_TOPOLOGY = flags.DEFINE_string(
    'topology', None, 'TPU topology (v4:2x2x2, v5e:4x4, v5p:4x4x4, v6e:8x8), '
    'a GPU (h100, h200, a100) or cpu-N.')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON line instead of a table.')
_SLICES = flags.DEFINE_integer(
    'slices', 1, 'TPU slices joined by the data-center network (multi-slice): '
    'the data axis spans them; the report lists the collectives that cross.')
_SEARCH = flags.DEFINE_string(
    'search', None, 'Compile every combination of settings and rank them: '
    '"default", or key=value|value,... with keys as in --config.KEY '
    '(see vit_jax/tools/aot_search.py).')

GIB = devices_lib.GIB
GPU_TARGETS = ('h100', 'h200', 'a100')
GPU_TARGETS_DIR = os.path.join(os.path.dirname(__file__), 'gpu_targets')


def cuda_plugin_installed() -> bool:
  try:
    return importlib.util.find_spec('jax_plugins.xla_cuda13') is not None
  except ModuleNotFoundError:  # not even the namespace package
    return False


def gpu_devices(name: str):
  """The one device of a compile-only CUDA topology for GPU `name`."""
  if not cuda_plugin_installed():
    raise UserError(f'--topology {name} compiles with JAX\'s CUDA plugin, '
                    f'which is not installed; pip install -e ".[gpu-aot]".')
  with open(os.path.join(GPU_TARGETS_DIR, f'{name}.txtpb')) as f:
    target_config = f.read()
  return topologies.get_topology_desc(
      platform='cuda', target_config=target_config, topology='1x1x1').devices


# A multi-slice TPU program does its cross-slice (data-center network)
# collectives through the Megascale runtime: each is a host-transfer recv
# tagged with its kind, within-slice collectives stay ordinary HLO ops.
_MEGASCALE_RECV = re.compile(
    r'= \((\w+)\[([\d,]*)\].*?\) recv\(.*?'
    r'_xla_megascale_transfer_type="(\w+)"')
_DTYPE_BYTES = {'f32': 4, 'bf16': 2, 'f16': 2, 's32': 4, 'u32': 4, 'f64': 8,
                's8': 1, 'u8': 1, 'pred': 1}


def collectives_across_slices(hlo_text: str) -> list[dict]:
  """The transfers of one chip's optimized multi-slice module that cross
  the data-center network: kind (ALL_REDUCE, ALL_GATHER, ...), shape,
  bytes. A large gradient is first reduce-scattered inside the slice, so
  each chip sends only its shard across."""
  crossing = []
  for dtype, dims, kind in _MEGASCALE_RECV.findall(hlo_text):
    crossing.append({'kind': kind, 'shape': f'{dtype}[{dims}]',
                     'bytes': _array_bytes(dtype, dims)})
  return crossing


# Collectives of an optimized module, synchronous or started
# asynchronously; `-done` halves are not counted again.
_COLLECTIVE = re.compile(
    r'^\s*(?:ROOT )?%\S+ = (.*?) (all-reduce|all-gather|reduce-scatter|'
    r'all-to-all|collective-permute)(-start)?\(', re.M)
_ARRAY_SHAPE = re.compile(r'\b(\w+)\[([\d,]*)\]')


def _array_bytes(dtype: str, dims: str) -> int:
  elements = int(np.prod([int(d) for d in dims.split(',') if d]))
  return elements * _DTYPE_BYTES.get(dtype, 4)


def collective_bytes(hlo_text: str) -> dict[str, dict[str, int]]:
  """Per kind of collective in one device's optimized module: how many ops
  and the bytes of their results (all elements of a combined op). An
  asynchronous start's result holds its operands too, so only its last
  element counts. libtpu's step estimate leaves the interconnect out, so
  these are the network's share of a step that the estimate cannot show."""
  totals: dict[str, dict[str, int]] = {}
  for shape, kind, started in _COLLECTIVE.findall(hlo_text):
    arrays = _ARRAY_SHAPE.findall(shape)
    if started and kind != 'all-reduce':
      arrays = arrays[-1:]
    entry = totals.setdefault(kind, {'count': 0, 'bytes': 0})
    entry['count'] += 1
    entry['bytes'] += sum(_array_bytes(dtype, dims) for dtype, dims in arrays
                          if dtype in _DTYPE_BYTES)
  return totals


def topology_devices(name: str, slices: int = 1):
  """Devices to compile for: a GPU, a TPU topology (of `slices` slices)
  or N CPU devices."""
  if name in GPU_TARGETS:
    return gpu_devices(name)
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
        platform='tpu', topology_name=name,
        **({'num_slices': slices} if slices > 1 else {})).devices
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f'cannot describe TPU topology {name!r} ({str(e).splitlines()[0]}). '
        f'It needs libtpu (pip install -e ".[tpu-aot]") and a name like '
        f'v4:2x2x2, v5e:4x4, v5p:4x4x4 or v6e:8x8.') from None


def kernel_inventory(hlo_text: str) -> dict[str, int]:
  """Counts of the kernels an optimized GPU module calls."""
  targets = re.findall(r'custom_call_target="([^"]+)"', hlo_text)
  fused_attention = [t for t in targets if t.startswith('__cudnn$fmha')]
  return dict(
      cudnn_attention_forward=sum('Backward' not in t for t in fused_attention),
      cudnn_attention_backward=sum('Backward' in t for t in fused_attention),
      cublaslt_gemms=targets.count('__cublas$lt$matmul'),
      cublas_gemms=targets.count('__cublas$gemm'),
      triton_kernels=sum('triton' in t for t in targets) + len(
          re.findall(r'"kind":"__triton', hlo_text)),
      fusions=len(re.findall(r'= [^=\n]* fusion\(', hlo_text)))


def pallas_kernel_count(hlo_text: str) -> int:
  """Pallas (Mosaic) kernels in an optimized TPU module. libtpu's step
  estimate does not cost their code: it takes the cost each kernel
  declares (pallas_call's cost_estimate), so a step with such kernels has
  an estimate only as good as those declarations."""
  return hlo_text.count('custom_call_target="tpu_custom_call"')


def compile_report(config, devices) -> dict:
  """Compiles the train step of `config` for `devices`; returns figures."""
  on_gpu = devices[0].platform in ('gpu', 'cuda')
  if on_gpu and config.model.get('attention_implementation') is None:
    # What the model picks on the GPU itself (here JAX's backend is the CPU).
    config.model.attention_implementation = resolve_implementation(
        None, config.model.dtype, config.model.hidden_size // config.model.num_heads,
        platform='gpu')
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
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
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
      roofline_mfu=(analytic / roofline / peak) if roofline and peak else None,
      attention=config.model.get('attention_implementation'))
  hlo_text = compiled.as_text()
  if on_gpu:
    report['kernels'] = kernel_inventory(hlo_text)
  elif devices[0].platform == 'tpu':
    report['pallas_kernels'] = pallas_kernel_count(hlo_text)
  report['collectives'] = collective_bytes(hlo_text)
  slices = sharding.slice_count(devices)
  if slices > 1:
    report['slices'] = slices
    report['collectives_across_slices'] = collectives_across_slices(hlo_text)
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
  if r.get('pallas_kernels'):
    lines.append(f'  {r["pallas_kernels"]} Pallas kernels: the estimate takes their '
                 f'cost from what each declares, not from their code')
  if r['roofline_step_seconds']:
    lines.append(f'  roofline bound {1e3 * r["roofline_step_seconds"]:.1f} ms, '
                 f'MFU at most {100 * r["roofline_mfu"]:.1f}%')
  if r.get('collectives'):
    lines.append('  collectives per chip and step (not in the estimate): ' + ', '.join(
        f'{kind} x{c["count"]} ({c["bytes"] / GIB:.3f} GiB)'
        for kind, c in sorted(r['collectives'].items())))
  if r.get('slices'):
    crossing = r['collectives_across_slices']
    kinds = {}
    for c in crossing:
      count, size = kinds.get(c['kind'], (0, 0))
      kinds[c['kind']] = (count + 1, size + c['bytes'])
    lines.append(f'  {r["slices"]} slices: {len(crossing)} transfers per chip and '
                 f'step cross the data-center network: ' + (', '.join(
                     f'{kind} x{count} ({size / 2**20:.1f} MiB)'
                     for kind, (count, size) in sorted(kinds.items())) or 'none'))
  if r.get('kernels'):
    k = r['kernels']
    lines.append(
        f'  kernels ({r["attention"]} attention): cuDNN fused attention '
        f'{k["cudnn_attention_forward"]} forward, {k["cudnn_attention_backward"]} '
        f'backward; GEMMs {k["cublaslt_gemms"]} cuBLASLt, {k["cublas_gemms"]} '
        f'cuBLAS; {k["triton_kernels"]} Triton; {k["fusions"]} fusions')
  return '\n'.join(lines)


def main():
  devices = topology_devices(_TOPOLOGY.value, _SLICES.value)
  if _SEARCH.value:
    try:
      rows = aot_search.search(app.CONFIG.value, devices, _SEARCH.value,
                               compile_report, log=app.console)
    except aot_search.SearchSpecError as e:
      raise UserError(str(e)) from None
    print(json.dumps(rows) if _JSON.value else aot_search.format_search(rows))
    return
  app.console(f'compiling the train step for {_TOPOLOGY.value} '
              f'({len(devices)} x {devices[0].device_kind}) ...')
  report = compile_report(app.CONFIG.value, devices)
  print(json.dumps(report) if _JSON.value else format_report(report))


def _preset_cpu_devices(argv) -> None:
  """cpu-N needs N host devices before JAX starts."""
  for i, arg in enumerate(argv):
    value = arg.split('=', 1)[1] if arg.startswith('--topology=') else (
        argv[i + 1] if arg == '--topology' and i + 1 < len(argv) else None)
    if value and value.startswith('cpu-'):
      os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                                 f' --xla_force_host_platform_device_count={value[4:]}')


def _preset_gpu_compile(argv) -> None:
  """A GPU target compiles on this machine's CPU backend, with cuBLASLt for
  every matmul (Triton's GEMM tiling needs autotuning on a device)."""
  if not any(arg.removeprefix('--topology=') in GPU_TARGETS or
             (arg == '--topology' and i + 1 < len(argv) and argv[i + 1] in GPU_TARGETS)
             for i, arg in enumerate(argv)):
    return
  if not os.environ.get('JAX_PLATFORMS'):
    # JAX read the environment when it was imported: set the config itself.
    jax.config.update('jax_platforms', 'cpu')
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_gpu_enable_triton_gemm=false')


def run() -> None:
  _preset_cpu_devices(sys.argv)
  _preset_gpu_compile(sys.argv)
  # Compiling for a topology needs no other process.
  app.run(main, required=('config', 'topology'), distributed=False)


if __name__ == '__main__':
  run()
