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
  last = stdout.strip().splitlines()[-1]
  assert last.startswith('done: 30 steps, 0:')
  assert (f'wall time; eval/accuracy {records[-1]["eval/accuracy"]:.4g}; '
          f'checkpoints, metrics.jsonl and TensorBoard events in {tmp_path}') in last
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


def test_the_summary_line_names_each_evals_final_and_best():
  from vit_jax import train as train_main  # pylint: disable=g-import-not-at-top
  history = [{'step': 10, 'loss': 2.0, 'eval/accuracy': 0.5, 'eval/accuracy_examples': 8},
             {'step': 20, 'loss': 1.0, 'eval/accuracy': 0.75, 'eval/real': 0.6},
             {'step': 30, 'loss': 0.5, 'eval/accuracy': 0.625, 'eval/real': 0.7}]
  assert train_main.summary_line(history, 30, 3725, 'gs://b/run') == (
      'done: 30 steps, 1:02:05 wall time; eval/accuracy 0.625 (best 0.75 at '
      'step 20); eval/real 0.7; checkpoints, metrics.jsonl and TensorBoard '
      'events in gs://b/run')
