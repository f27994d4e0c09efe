"""The pre-training entry point on the bundled digits, and its resume."""

import json

from process_runs import run_module


def train(workdir, *overrides):
  return run_module(
      'vit_jax.train', '--config', 'configs/demo.py', '--workdir', workdir,
      '--config.total_steps=30', '--config.log_steps=10',
      '--config.evals.accuracy.every_steps=30', '--config.checkpoint_steps=30',
      '--config.schedule.warmup_steps=5', *overrides, timeout=300).stdout


def test_demo_trains_on_digits_logs_and_resumes(tmp_path):
  stdout = train(tmp_path)
  assert 'dataset digits' in stdout
  assert 'step 30/30' in stdout and 'eval/accuracy' in stdout
  records = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records] == [10, 20, 30]
  assert records[-1]['eval/accuracy_examples'] == 360
  assert records[-1]['loss'] < records[0]['loss']
  assert (tmp_path / 'checkpoints' / '30').is_dir()
  again = train(tmp_path)
  assert 'resumed from step 30' in again and 'step 30/30' not in again


def test_unknown_dataset_fails_with_a_clear_message(tmp_path):
  out = run_module(
      'vit_jax.train', '--config', 'configs/demo.py', '--workdir', tmp_path,
      '--config.dataset=imagenet2012', '--config.num_classes=1000',
      f'--config.data_dir={tmp_path}', check=False, timeout=300)
  assert out.returncode != 0
  assert 'put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar' in out.stderr
  assert f'tfds build imagenet2012 --data_dir={tmp_path}' in out.stderr
