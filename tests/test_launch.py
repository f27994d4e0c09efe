"""Launch scripts (dry runs, syntax, shellcheck, a real two-process local
run) and the ahead-of-time compile for a TPU topology."""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ['launch/tpu_pod.sh', 'launch/gpu_slurm.sbatch', 'launch/local.sh',
           'launch/gpu_benchmark.sh']


def sh(*args, env=None):
  out = subprocess.run(['bash', *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env={**os.environ, **(env or {})})
  return out


@pytest.mark.parametrize('script', SCRIPTS)
def test_scripts_parse_and_pass_shellcheck(script):
  assert sh('-n', script).returncode == 0
  shellcheck = shutil.which('shellcheck') or os.path.join(
      os.path.dirname(sys.executable), 'shellcheck')
  out = subprocess.run([shellcheck, script], cwd=ROOT, capture_output=True,
                       text=True)
  assert out.returncode == 0, out.stdout


def test_tpu_train_runs_the_same_command_on_every_worker():
  args = ['launch/tpu_pod.sh', '--dry-run', 'train', '--name', 'vit',
          '--zone', 'us-east5-a', '--workdir', 'gs://bucket/run',
          '--tfds-data-dir', 'gs://bucket/tfds',
          '--config', 'configs/pretrain.py:model=B/16', '--',
          '--config.batch_size=4096']
  first, again = sh(*args), sh(*args)
  assert first.returncode == 0, first.stderr
  # A rerun (e.g. after a preemption) is the identical command, and the
  # trainer resumes from the newest checkpoint in the shared workdir.
  assert first.stdout == again.stdout
  lines = first.stdout.strip().splitlines()
  assert len(lines) == 1
  line = lines[0]
  assert line.startswith('gcloud compute tpus tpu-vm ssh vit --zone=us-east5-a '
                         '--worker=all --command=')
  for part in ('vit_jax.train', '--workdir=gs://bucket/run',
               'TFDS_DATA_DIR=gs://bucket/tfds', '--config.batch_size=4096',
               'nohup'):
    assert part in line


def test_tpu_create_setup_stop_delete_and_errors():
  create = sh('launch/tpu_pod.sh', '--dry-run', 'create', '--name', 'vit',
              '--zone', 'z', '--accelerator', 'v5p-128', '--spot', '--queued')
  assert create.stdout.split() == [
      'gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'vit',
      '--zone=z', '--node-id=vit', '--accelerator-type=v5p-128',
      '--runtime-version=v2-alpha-tpuv5', '--spot']
  setup = sh('launch/tpu_pod.sh', '--dry-run', 'setup', '--name', 'vit', '--zone', 'z')
  assert '--worker=all' in setup.stdout and 'jax\\[tpu\\]' in setup.stdout
  stop = sh('launch/tpu_pod.sh', '--dry-run', 'stop', '--name', 'vit', '--zone', 'z')
  assert '--worker=all' in stop.stdout and 'pkill\\ -TERM' in stop.stdout
  delete = sh('launch/tpu_pod.sh', '--dry-run', 'delete', '--name', 'vit',
              '--zone', 'z', '--queued')
  assert 'queued-resources delete vit' in delete.stdout
  local_workdir = sh('launch/tpu_pod.sh', '--dry-run', 'train', '--name', 'vit',
                     '--zone', 'z', '--workdir', '/tmp/run')
  assert local_workdir.returncode == 2
  assert "--workdir must be a gs:// path" in local_workdir.stderr


def test_slurm_dry_run_starts_one_distributed_process_per_task():
  out = sh('launch/gpu_slurm.sbatch', '--workdir', '/shared/run', '--config',
           'configs/pretrain.py:model=B/16', '--', '--config.batch_size=4096',
           env={'DRY_RUN': '1'})
  assert out.stdout.split() == [
      'srun', '--kill-on-bad-exit=1', '--cpu-bind=none', 'python3', '-m',
      'vit_jax.train', '--distributed=on', '--config=configs/pretrain.py:model=B/16',
      '--workdir=/shared/run', '--config.batch_size=4096']
  text = open(os.path.join(ROOT, 'launch/gpu_slurm.sbatch')).read()
  assert '#SBATCH --ntasks-per-node=8' in text and '#SBATCH --gpus-per-node=8' in text


def test_local_launcher_runs_two_processes(tmp_path):
  dry = sh('launch/local.sh', '--dry-run', '--processes', '2', '--workdir',
           str(tmp_path))
  lines = dry.stdout.strip().splitlines()
  assert [l.split()[-1] for l in lines] == ['--process_id=0', '--process_id=1']
  out = sh('launch/local.sh', '--processes', '2', '--port', '12391',
           '--workdir', str(tmp_path), '--', '--config.total_steps=4',
           '--config.schedule.warmup_steps=1', '--config.log_steps=2',
           '--config.evals.accuracy.every_steps=4', '--config.checkpoint_steps=4',
           '--config.evals.fewshot.every_steps=0',
           env={'JAX_PLATFORMS': 'cpu', 'PYTHON': sys.executable})
  assert out.returncode == 0, out.stderr[-3000:]
  assert '2 processes, 2 devices' in out.stdout
  records = [json.loads(l) for l in
             (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert records[-1]['step'] == 4 and records[-1]['eval/accuracy_examples'] == 360


def _demo_config_for_tpu_compiles():
  """The demo config at 32 px, for compiles to a TPU topology (skips the
  test where libtpu, the TPU compiler, is not installed)."""
  try:
    import libtpu  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    pytest.skip('libtpu is not installed (pip install -e ".[tpu-aot]"); '
                'it is needed to compile for a TPU topology.')
  from configs.demo import get_config  # pylint: disable=g-import-not-at-top
  config = get_config()
  config.unlock()
  config.image_size = 32
  return config


def test_aot_compiles_the_train_step_for_a_v5e_2x2():
  from vit_jax.tools import aot  # pylint: disable=g-import-not-at-top
  config = _demo_config_for_tpu_compiles()
  report = aot.compile_report(config, aot.topology_devices('v5e:2x2'))
  assert report['device_kind'] == 'TPU v5 lite' and report['chips'] == 4
  assert 0 < report['total_gib'] < report['hbm_gib'] == 16 and report['fits']
  # The compiler's FLOPs agree with the analytic count within 10%.
  assert abs(report['xla_flops_per_chip'] / report['analytic_flops_per_chip'] - 1) < 0.1
  # No Pallas kernel, so libtpu's estimate costs the whole step's code.
  assert report['pallas_kernels'] == 0
  assert 'memory:' in aot.format_report(report)


def test_aot_optimizer_state_split_over_the_data_axis_of_a_v5e_2x2():
  """ZeRO-1 compiled for 4 TPU chips: each chip holds a quarter of Adam's
  moments (float32 in the demo config) instead of all of them. The tiny
  model's vectors are padded to the chip's tiles, whole or split, so
  somewhat less than three quarters of the moments' bytes are saved."""
  import jax  # pylint: disable=g-import-not-at-top
  from vit_jax.models import build_model  # pylint: disable=g-import-not-at-top
  from vit_jax.tools import aot  # pylint: disable=g-import-not-at-top
  devices = aot.topology_devices('v5e:2x2')
  held, collectives = {}, {}
  for split in (False, True):
    config = _demo_config_for_tpu_compiles()
    config.shard_optimizer_state = split
    report = aot.compile_report(config, devices)
    held[split] = report['argument_gib'] * 2**30
    collectives[split] = report['collectives']
  model = build_model(config.model, 10)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jax.numpy.zeros((1, 32, 32, 3))))['params']
  moments = 2 * 4 * sum(x.size for x in jax.tree.leaves(shapes))
  assert 0.5 * moments <= held[False] - held[True] <= 0.75 * moments
  # The price on the interconnect: the replicated update all-reduces the
  # gradient (float32 here). Split, the gradient is still all-reduced whole
  # (XLA does not make it a reduce-scatter) and every chip also receives
  # the new float32 parameters: about twice the bytes.
  gradient = moments / 2
  assert set(collectives[False]) == {'all-reduce'}
  assert gradient <= collectives[False]['all-reduce']['bytes'] <= 1.1 * gradient
  assert collectives[True]['all-reduce']['bytes'] >= gradient
  split_bytes = sum(c['bytes'] for c in collectives[True].values())
  assert 1.9 * gradient <= split_bytes <= 2.2 * gradient


def test_aot_two_slices_cross_the_network_only_with_the_gradient_all_reduce():
  """2 slices of v5e 2x2, the data axis over the data-center network: the
  transfers that cross it are all-reduces, and their bytes are the
  gradient's (float32 parameters), up to the padding of small tensors to
  the chip's tiles and a few scalars of metrics."""
  import jax  # pylint: disable=g-import-not-at-top
  from vit_jax.models import build_model  # pylint: disable=g-import-not-at-top
  from vit_jax.tools import aot  # pylint: disable=g-import-not-at-top
  config = _demo_config_for_tpu_compiles()
  devices = aot.topology_devices('v5e:2x2', slices=2)
  assert sorted({d.slice_index for d in devices}) == [0, 1] and len(devices) == 8
  report = aot.compile_report(config, devices)
  crossing = report['collectives_across_slices']
  assert report['slices'] == 2 and {c['kind'] for c in crossing} == {'ALL_REDUCE'}
  model = build_model(config.model, 10)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jax.numpy.zeros((1, 32, 32, 3))))['params']
  gradient = 4 * sum(x.size for x in jax.tree.leaves(shapes))
  assert gradient <= sum(c['bytes'] for c in crossing) <= 1.1 * gradient
  assert 'ALL_REDUCE x' in aot.format_report(report)


def test_the_tpu_step_estimate_takes_a_pallas_kernels_declared_cost():
  """One Pallas kernel, the same code, compiled for a v5p 2x2x1 twice with
  different declared costs: libtpu's step estimate follows the declaration
  (about a thousand times apart), so the report counts such kernels and
  says that their cost is not measured."""
  _demo_config_for_tpu_compiles()  # skips without libtpu
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import pallas as pl  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from vit_jax.tools import aot  # pylint: disable=g-import-not-at-top
  mesh = Mesh(np.array(aot.topology_devices('v5p:2x2x1')), ('x',))

  def double(x_ref, out_ref):
    out_ref[...] = x_ref[...] * 2

  def compiled(declared_flops):
    call = pl.pallas_call(
        double, out_shape=jax.ShapeDtypeStruct((1024, 1024), np.float32),
        cost_estimate=pl.CostEstimate(flops=declared_flops, transcendentals=0,
                                      bytes_accessed=8 * 2**20))
    step = jax.jit(jax.shard_map(call, mesh=mesh, in_specs=P('x'),
                                 out_specs=P('x'), check_vma=False))
    x = jax.ShapeDtypeStruct((4096, 1024), np.float32,
                             sharding=NamedSharding(mesh, P('x')))
    return step.lower(x).compile()

  def estimate(c):
    cost = c.cost_analysis()
    return (cost[0] if isinstance(cost, (list, tuple)) else cost)['optimal_seconds']

  cheap, dear = compiled(10**6), compiled(10**12)
  assert aot.pallas_kernel_count(cheap.as_text()) == 1
  assert estimate(dear) > 300 * estimate(cheap) > 0
  report = dict(model='custom', batch_size=4096, image_size=224, dtype='bfloat16',
                chips=4, device_kind='TPU v5', mesh={'x': 4}, argument_gib=1.,
                temp_gib=1., output_gib=1., alias_gib=1., total_gib=2.,
                hbm_gib=95., fits=True, xla_flops_per_chip=None,
                estimated_step_seconds=estimate(dear), estimated_mfu=None,
                roofline_step_seconds=None, pallas_kernels=1)
  assert ('1 Pallas kernels: the estimate takes their cost from what each '
          'declares') in aot.format_report(report)


def test_the_tpu_step_estimate_leaves_the_interconnect_out():
  """A 328 MiB all-reduce over 64 v5p chips: libtpu's estimate is the time
  to read and write those bytes in HBM, not to send them between chips
  (each chip sends and receives about twice them, over links several
  times slower than HBM). So the report lists the collectives beside it."""
  _demo_config_for_tpu_compiles()  # skips without libtpu
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from vit_jax.runtime import devices as devices_lib  # pylint: disable=g-import-not-at-top
  from vit_jax.tools import aot  # pylint: disable=g-import-not-at-top
  devices = aot.topology_devices('v5p:4x4x4')
  mesh = Mesh(np.array(devices), ('x',))
  total = jax.jit(jax.shard_map(lambda x: jax.lax.psum(x, 'x'), mesh=mesh,
                                in_specs=P(), out_specs=P(), check_vma=False))
  size = 86 * 10**6
  compiled = total.lower(jax.ShapeDtypeStruct(
      (size,), np.float32, sharding=NamedSharding(mesh, P()))).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  hbm_seconds = cost['bytes accessed'] / devices_lib.spec_of(
      devices[0].device_kind).bandwidth
  assert cost['bytes accessed'] >= 2 * 4 * size
  assert cost['optimal_seconds'] < 1.5 * hbm_seconds
  assert aot.collective_bytes(compiled.as_text()) == {
      'all-reduce': {'count': 1, 'bytes': 4 * size}}


def test_aot_search_ranks_compiled_candidates_for_a_v5e_2x2():
  """--search: every combination compiled for the TPU topology, those that
  compile ranked by the roofline bound (v5e has no step estimate), one
  that cannot be built (fsdp 3 on 4 chips) last with its error, and the
  best candidate's flags to paste."""
  from vit_jax.tools import aot, aot_search  # pylint: disable=g-import-not-at-top
  config = _demo_config_for_tpu_compiles()
  lines = []
  rows = aot_search.search(
      config, aot.topology_devices('v5e:2x2'),
      'model.attention_logits_dtype=float32|compute,mesh.fsdp=1|3',
      aot.compile_report, log=lines.append)
  assert len(lines) == 4 and lines[0] == (
      'compiling candidate 1 of 4: --config.model.attention_logits_dtype=float32 '
      '--config.mesh.fsdp=1')
  built = [r for r in rows if 'report' in r]
  assert [r['overrides']['mesh.fsdp'] for r in rows] == [1, 1, 3, 3]
  assert all('error' in r for r in rows[2:])
  bounds = [r['report']['roofline_step_seconds'] for r in built]
  assert bounds == sorted(bounds) and all(r['report']['fits'] for r in built)
  table = aot_search.format_search(rows)
  assert table.splitlines()[-1] == 'best: ' + aot_search.flags_of(rows[0]['overrides'])
  # The interconnect's share, which no estimate ranks: the gradient's
  # all-reduce at least.
  network = sum(c['bytes'] for c in rows[0]['report']['collectives'].values())
  assert network > 0 and table.splitlines()[0].endswith('collectives GiB/chip')
  assert table.splitlines()[2].endswith(f'| {network / 2**30:.3g}')
  with pytest.raises(aot_search.SearchSpecError, match="key 'model.remat' is not"):
    aot_search.search(config, aot.topology_devices('v5e:2x2'), 'model.remat=none',
                      aot.compile_report)


def test_gpu_benchmark_runs_each_stage_once_and_rejects_unknown_stages():
  out = sh('launch/gpu_benchmark.sh', '--dry-run', '--out', 'results',
           '--steps', '20')
  assert out.returncode == 0, out.stderr
  commands = [line for line in out.stdout.splitlines() if line.startswith('+ ')]
  names = [c.split('--output_json results/')[1].split('.json')[0] for c in commands]
  assert names == ['b16_bs256', 'b16_bs256_xla_flags', 'l16_bs128', 'h14_bs64']
  assert all('--steps 20' in c and 'dtype=bfloat16' in c for c in commands)
  assert '--peer timm' in commands[0] and '--sweep_xla_flag=gpu' in commands[1]
  only = sh('launch/gpu_benchmark.sh', '--dry-run', '--only', 'large',
            '--out', 'results', '--steps', '20')
  assert [l for l in only.stdout.splitlines() if l.startswith('+ ')] == commands[2:]
  bad = sh('launch/gpu_benchmark.sh', '--dry-run', '--only', 'h100')
  assert bad.returncode == 2 and "'h100'" in bad.stderr


@pytest.mark.parametrize('module', ['vit_jax.finetune', 'vit_jax.fewshot'])
def test_launchers_run_any_pod_entry_point(module):
  config = ('configs/finetune.py:model=B/16,dataset=cifar10'
            if module == 'vit_jax.finetune' else 'configs/fewshot.py:model=B/16')
  tpu = sh('launch/tpu_pod.sh', '--dry-run', 'train', '--name', 'vit',
           '--zone', 'z', '--module', module, '--workdir', 'gs://bucket/ft',
           '--config', config, '--', '--config.init_from=gs://bucket/run')
  assert tpu.returncode == 0, tpu.stderr
  assert (f'nohup\\ python3\\ -m\\ {module}\\ --config=' in tpu.stdout
          and 'vit_jax.train' not in tpu.stdout)
  stop = sh('launch/tpu_pod.sh', '--dry-run', 'stop', '--name', 'vit',
            '--zone', 'z', '--module', module)
  assert f'pkill\\ -TERM\\ -f\\ {module}' in stop.stdout
  slurm = sh('launch/gpu_slurm.sbatch', '--module', module, '--workdir',
             '/shared/ft', '--config', config, env={'DRY_RUN': '1'})
  assert slurm.stdout.split()[3:7] == ['python3', '-m', module, '--distributed=on']
  local = sh('launch/local.sh', '--dry-run', '--processes', '2', '--module',
             module, '--workdir', '/tmp/ft', '--config', config,
             env={'PYTHON': 'python3'})
  assert [l.split()[:3] for l in local.stdout.strip().splitlines()] == [
      ['python3', '-m', module]] * 2


def test_launchers_refuse_a_module_the_checkout_does_not_have():
  for args, env in (
      (['launch/tpu_pod.sh', '--dry-run', 'train', '--name', 'vit', '--zone',
        'z', '--module', 'vit_jax.trian', '--workdir', 'gs://b/r'], None),
      (['launch/gpu_slurm.sbatch', '--module', 'vit_jax.trian', '--workdir',
        '/r'], {'DRY_RUN': '1'}),
      (['launch/local.sh', '--dry-run', '--module', 'vit_jax.trian',
        '--workdir', '/r'], None)):
    out = sh(*args, env=env)
    assert out.returncode == 2 and out.stdout == ''
    assert ('--module vit_jax.trian: no vit_jax/trian.py in this checkout; pass '
            'an entry point such as vit_jax.train or vit_jax.finetune') in out.stderr
