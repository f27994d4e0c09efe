"""Config checks: every bad value the user can type is one UserError line
naming the key, found before anything is written; evaluator types and
export formats plug in by name."""

import ast
import os
import sys

import pytest

from process_runs import ROOT
from vit_jax import evaluators
from vit_jax.config import checks
from vit_jax.models.variants import get_model_config
from vit_jax.runtime.user_errors import ConfigError, UserError
from vit_jax.training import metrics

DEMO = ('--config', 'configs/demo.py')

# (flags after the demo config, the message's distinctive part)
CONFIG_CASES = {
    'negative_batch': (['--config.batch_size=-1'],
                       'config.batch_size=-1: expected a whole number >= 1; '
                       'set --config.batch_size=N with N >= 1.'),
    'zero_batch': (['--config.batch_size=0'], 'config.batch_size=0: expected'),
    'zero_eval_batch': (['--config.eval_batch_size=0'],
                        'config.eval_batch_size=0: expected'),
    'zero_steps': (['--config.total_steps=0'], 'config.total_steps=0: expected'),
    'zero_log_steps': (['--config.log_steps=0'], 'config.log_steps=0: expected'),
    'negative_eval_steps': (['--config.evals.accuracy.every_steps=-1'],
                            'config.evals.accuracy.every_steps=-1: expected a '
                            'whole number >= 0'),
    'negative_lr': (['--config.schedule.base_lr=-0.1'],
                    'config.schedule.base_lr=-0.1: expected a number in (0, inf]'),
    'long_warmup': (['--config.schedule.warmup_steps=5000'],
                    'config.schedule.warmup_steps=5000 exceeds '
                    'config.total_steps=1500; set --config.schedule.warmup_steps '
                    'to at most 1500'),
    'unknown_decay': (['--config.schedule.decay_type=exp'],
                      "config.schedule.decay_type='exp': expected one of"),
    'unknown_optimizer': (['--config.optimizer.name=lion'],
                          "config.optimizer.name='lion': expected one of "
                          "['adam', 'sgd', 'adafactor']"),
    'image_size_not_multiple': (['--config.image_size=9'],
                                'config.image_size=9 is not a multiple of the '
                                'patch size (2, 2) x stem stride 1'),
    'zero_image_size': (['--config.image_size=0'], 'config.image_size=0: expected'),
    'unknown_model_name': (['--config.model.name=B/17x'],
                           "config.model.name='B/17x': unknown model 'B/17x'"),
    'heads_do_not_divide_width': (['--config.model.num_heads=5'],
                                  'config.model.hidden_size=64 is not divisible '
                                  'by config.model.num_heads=5'),
    'unknown_classifier': (['--config.model.classifier=cls'],
                           "config.model.classifier='cls': expected one of"),
    'dropout_of_one': (['--config.model.dropout_rate=1.0'],
                       'config.model.dropout_rate=1.0: expected a number in [0, 1)'),
    'unknown_dtype': (['--config.model.dtype=float8'],
                      "config.model.dtype='float8': expected one of"),
    'mesh_too_large': (['--config.mesh.data=3'],
                       "config.mesh={'data': 3, 'fsdp': 1, 'tensor': 1}: mesh "
                       "{'data': 3, 'fsdp': 1, 'tensor': 1} has 3 devices but 1 "
                       'are available'),
    'mesh_zero': (['--config.mesh.tensor=0'], "axis 'tensor' has size 0"),
    'batch_and_accumulation': (['--config.batch_size=100', '--config.accum_steps=3'],
                               'config.batch_size=100 is not divisible by the '
                               'data-parallel size 1 x accum_steps 3'),
    'unknown_eval_split': (['--config.eval_split=valid'],
                           "config.eval_split='valid': unknown split 'valid'; "
                           "this dataset has splits ['test', 'train']"),
    'unknown_train_split': (['--config.train_split=training'],
                            "config.train_split='training': unknown split"),
    'bad_placeholder': (['--config.pp_eval=resize({size})'],
                        "config.pp_eval='resize({size})': unknown placeholder {size}"),
    'unknown_op': (['--config.pp_train=rotate(3)'],
                   "config.pp_train='rotate(3)': unknown op 'rotate'"),
    'wrong_class_count': (['--config.num_classes=7'],
                          "dataset 'digits' has 10 classes but config.num_classes=7"),
}


def demo_config(flags):
  """configs/demo.py with `--config.key=value` flags applied as the flag
  parser would: Python literals, else strings."""
  from vit_jax.config.files import sibling  # pylint: disable=g-import-not-at-top
  config = sibling(os.path.join(ROOT, 'configs', 'demo.py'), 'demo').get_config()
  for flag in flags:
    key, _, text = flag[len('--config.'):].partition('=')
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


@pytest.mark.parametrize('case', sorted(CONFIG_CASES))
def test_bad_config_value_is_one_user_error_before_the_workdir(case):
  """What the entry point checks before it touches the workdir
  (`train.prepare`), in this process: one exception per case."""
  from vit_jax import train  # pylint: disable=g-import-not-at-top
  flags, message = CONFIG_CASES[case]
  with pytest.raises(UserError) as raised:
    train.prepare(demo_config(flags), log=lambda _: None)
  assert message in str(raised.value) and '\n' not in str(raised.value)




def test_unknown_evaluator_type_lists_the_builtin_ones():
  config = demo_config(['--config.evals.accuracy.type=top5'])
  with pytest.raises(ConfigError) as raised:
    checks.check_config(config, num_devices=1)
  assert str(raised.value) == (
      "config.evals.accuracy.type='top5': expected one of classification, "
      "fewshot, real or the dotted path of an evaluator module; set "
      "--config.evals.accuracy.type.")


def test_an_evaluator_of_ones_own_is_one_module_named_by_its_path(tmp_path, monkeypatch):
  package = tmp_path / 'my_evals'
  package.mkdir()
  (package / '__init__.py').write_text('')
  (package / 'constant.py').write_text(
      'class Constant:\n'
      '  def __init__(self, every):\n'
      '    self.every_steps = every\n'
      '  def __call__(self, params):\n'
      '    return {"constant/value": 0.25, "constant/value_examples": 4}\n'
      'def make(name, spec, context):\n'
      '  context.log(f"{name}: {context.config.dataset}")\n'
      '  return lambda setup: Constant(spec.every_steps)\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  config = demo_config([])
  config.evals = {'mine': {'type': 'my_evals.constant', 'every_steps': 5}}
  checks.check_config(config, num_devices=1)
  lines = []
  made = evaluators.from_config(config, None, lines.append)(None)
  assert lines == ['mine: digits'] and made[0].every_steps == 5
  scalars = {'loss': 1.0, **made[0](None)}
  assert metrics.progress_line(5, 10, scalars) == (
      'step 5/10 | loss 1 | constant/value 0.25')
  sys.modules.pop('my_evals.constant', None)
  sys.modules.pop('my_evals', None)


@pytest.mark.parametrize('export,message', [
    ('onnx', "config.export='onnx': expected one of ['vit_jax', 'big_vision', 'hf']"),
    ('vit_jax,hf', "config.export='vit_jax,hf': the model cannot be exported as "
                   "'hf': ")])
def test_export_formats_are_checked_by_name_and_by_what_they_can_hold(export, message):
  model = get_model_config('Ti/16')
  model.classifier = 'gap'
  with pytest.raises(ConfigError, match=None) as raised:
    checks.check_export(export, model)
  assert str(raised.value).startswith(message)


def test_progress_lines_fit_120_columns():
  """The console's names for the train scalars, one device's img/s once,
  and evaluators wrapped onto indented lines of at most 120 columns."""
  scalars = {'loss': 0.123456, 'grad_norm': 1.5, 'learning_rate': 2.5e-5,
             'img_per_sec': 1440.4, 'img_per_sec_per_device': 1440.4,
             'eta_hours': 1.5, 'eval/accuracy': 0.956, 'eval/accuracy_examples': 360,
             'eval/accuracy_ema': 0.95, **{f'fewshot/digits_{k}shot': 0.9 for k in (1, 5, 10)}}
  text = metrics.progress_line(1500, 1500, scalars)
  assert text.splitlines() == [
      'step 1500/1500 | loss 0.1235 | grad_norm 1.5 | lr 2.5e-05 | img/s 1440 | '
      'eta 1:30:00 | eval/accuracy 0.956',
      '    eval/accuracy_ema 0.95 | fewshot/digits_10shot 0.9 | '
      'fewshot/digits_1shot 0.9 | fewshot/digits_5shot 0.9']
  scalars['img_per_sec_per_device'] = 180.05
  assert 'img/s 1440 | img/s/device 180 | eta' in metrics.progress_line(1, 2, scalars)
  assert max(map(len, metrics.progress_line(1, 2, scalars).splitlines())) <= 120
