"""The train-step benchmark runs on synthetic data and reports consistent
figures (timings themselves are never asserted)."""

import time
import types

from process_runs import finish, run_module, run_python, start_processes
from tiny_jobs import tiny_config
from vit_jax.models import flops
from vit_jax.tools import benchmark
from vit_jax.tools import step_profile


class _SlowStep:
  """A train step whose compiled calls each sleep `seconds` and are
  recorded, so the benchmark's timing can be checked against a known
  lower bound."""

  def __init__(self, step, seconds, calls):
    self.step, self.seconds, self.calls = step, seconds, calls

  def lower(self, *args):
    lowered = self.step.lower(*args)
    slow = self

    class Compiled:
      def __init__(self):
        self.compiled = lowered.compile()

      def cost_analysis(self):
        return self.compiled.cost_analysis()

      def __call__(self, *call_args):
        slow.calls.append(1)
        time.sleep(slow.seconds)
        return self.compiled(*call_args)
    return types.SimpleNamespace(compile=Compiled)


def test_benchmark_times_every_measured_step_and_not_the_warmup(monkeypatch):
  config = tiny_config({})
  calls = []
  make_step = benchmark.make_train_step
  monkeypatch.setattr(benchmark, 'make_train_step',
                      lambda setup: _SlowStep(make_step(setup), 0.2, calls))
  result = benchmark.benchmark(config, steps=3, warmup=2)
  assert len(calls) == 2 + 3
  assert result['devices'] == 1 and result['batch_size'] == 16
  # Each timed step contains its 0.2 s call (and the tiny step itself
  # takes far less than the 0.2 s margin above it).
  assert 0.2 <= result['step_seconds_min'] <= result['step_seconds_median'] < 0.4
  assert result['images_per_second'] == 16 / result['step_seconds_median']
  analytic = flops.train_flops(config.model, 16, 10) * 16 / 1e12
  assert abs(result['analytic_tflops_per_step'] - analytic) < 1e-12
  # The compiler's count agrees with the analytic one within 15% even for
  # this tiny model (norms, softmax and the optimizer are not in it).
  assert abs(result['compiler_tflops_per_step_per_device'] / analytic - 1) < 0.15


def test_xla_flag_sweep_reruns_with_each_flag_and_reports_failures():
  argv = ['benchmark', '--config', 'configs/demo.py', '--steps=2', '--warmup=1',
          '--config.batch_size=8', '--peer=none', '--sweep_xla_flag=cpu']
  rows = benchmark.sweep_xla_flags(
      ['--xla_cpu_enable_fast_math=false', '--xla_no_such_flag=1'], argv)
  assert [row['flag'] for row in rows] == [
      None, '--xla_cpu_enable_fast_math=false', '--xla_no_such_flag=1']
  assert rows[0]['speedup'] == 1.0 and rows[1]['speedup'] > 0
  assert 'error' in rows[2] and 'speedup' not in rows[2]


def test_profile_summary_sums_traced_ops_per_part_and_kind():
  hlo = '\n'.join([
      '  %ynn_fusion.3 = f32[8,4]{1,0} fusion(%p), kind=kCustom, metadata={op_name="jit(step)/Transformer/encoderblock_0/MultiHeadDotProductAttention_0/dot_general"}',
      '  %ynn_fusion.4 = f32[8,4]{1,0} fusion(%p), kind=kCustom, metadata={op_name="jit(step)/Transformer/encoderblock_0/MlpBlock_0/Dense_0/dot_general"}',
      '  ROOT %copy_fusion.1 = f32[4,8]{1,0} fusion(%p), kind=kLoop, metadata={op_name="jit(step)/Transformer/encoderblock_0/LayerNorm_0/mul"}',
      '  %add.2 = f32[4]{0} add(%a, %b), metadata={op_name="jit(step)/adam/add"}'])
  events = [
      dict(ph='X', name='ynn_fusion.3', dur=3000), dict(ph='X', name='ynn_fusion.3', dur=1000),
      dict(ph='X', name='ynn_fusion.4', dur=2000), dict(ph='X', name='copy_fusion.1', dur=500),
      dict(ph='X', name='add.2', dur=500), dict(ph='X', name='ThunkExecutor::Execute', dur=9e6),
      dict(ph='i', name='ynn_fusion.4', dur=7000)]
  summary = step_profile.summarize(events, hlo, steps=2)
  assert summary['ops_ms_per_step'] == 3.5
  assert summary['by_kind'] == {'ynn_fusion': 3.0, 'copy_fusion': 0.25, 'add': 0.25}
  assert summary['by_part'] == {'attention': 2.0, 'mlp': 1.0, 'layernorm': 0.25,
                                'other (optimizer, residuals, ...)': 0.25}


def test_benchmark_profile_traces_the_model_parts():
  # On the CPU backend (run_module's default): libtpu's profiler plugin
  # must stay unloaded on a CPU host.
  out = run_module('vit_jax.benchmark', '--config', 'configs/demo.py',
                   '--config.batch_size=8', '--steps=1', '--warmup=1',
                   '--profile_steps=1', timeout=300)
  table = out.stdout[out.stdout.index('traced ops'):]
  for part in ('attention', 'mlp', 'layernorm', 'embedding'):
    assert f'  {part}\n' in table, table


def test_benchmark_runs_where_tensorflow_cannot_be_imported():
  """The GPU image has no TensorFlow: models, trainer and benchmark must not
  need it."""
  script = '''
import sys
class NoTensorFlow:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets'):
      raise ImportError(f'{name} is blocked')
sys.meta_path.insert(0, NoTensorFlow())
sys.argv = ['benchmark', '--config', 'configs/demo.py', '--config.batch_size=8',
            '--steps=1', '--warmup=1']
from vit_jax import app
from vit_jax.tools import benchmark
app.run(benchmark.main)
'''
  out = run_python('-c', script, timeout=300)
  assert 'step_seconds_median' in out.stdout


def test_two_processes_time_one_step_and_one_reports(tmp_path):
  procs = start_processes('vit_jax.benchmark', '--config', 'configs/demo.py',
                          '--config.batch_size=8', '--steps=2', '--warmup=1',
                          logs=tmp_path)
  first, second = finish(procs, tmp_path)
  rows = dict(line.split(None, 1) for line in first.splitlines() if line.strip())
  assert rows['devices'].strip() == '2' and rows['batch_size'].strip() == '8'
  assert float(rows['step_seconds_median']) > 0
  assert 'step_seconds_median' not in second  # one report, from process 0
