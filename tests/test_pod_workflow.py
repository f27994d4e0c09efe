"""The pod workflow against a local storage emulator (fake-gcs-server), as a
user runs it: the data converted to ArrayRecord shards in the bucket, two
processes with a gs:// workdir training on them, one SIGKILLed and the job
rerun, then fine-tuning and few-shot evaluation from the bucket on two
processes. Every file of the runs lands in the bucket; none on the local
disk but the copy of the data's shards each host reads."""

import json
import os
import signal
import time

import numpy as np

from process_runs import ROOT, finish, run_module, start_processes, wait_for_line
from vit_jax.formats import npz as checkpoints
from vit_jax.formats import transfer

DEMO = os.path.join(ROOT, 'configs', 'demo.py')
DATA = 'arrayrecord:gs://bucket/digits'
PRETRAIN = ['--config', DEMO, f'--config.dataset={DATA}', '--config.total_steps=24',
            '--config.checkpoint_steps=8', '--config.log_steps=4',
            '--config.evals.accuracy.every_steps=24', '--config.schedule.warmup_steps=4',
            '--config.evals.fewshot.every_steps=0']


def test_two_processes_on_a_bucket_resume_fine_tune_and_probe(
    storage_emulator, tmp_path):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', **storage_emulator.env}
  here = tmp_path / 'cwd'  # every process runs here; nothing may land in it
  here.mkdir()
  run = lambda module, *args, logs: finish(start_processes(
      module, *args, logs=tmp_path / logs, env=env, cwd=here), tmp_path / logs)
  cache = f'--config.data_cache_dir={tmp_path / "shards"}'

  run_module('vit_jax.data.convert', '--source=digits', '--shards=3',
             '--out=gs://bucket/digits', env=env, cwd=here)
  assert storage_emulator.objects('digits/') == [
      'digits/.shards/test-00000-of-00001.array_record.json',
      *[f'digits/.shards/train-0000{i}-of-00003.array_record.json' for i in range(3)],
      'digits/metadata.json', 'digits/test-00000-of-00001.array_record',
      *[f'digits/train-0000{i}-of-00003.array_record' for i in range(3)]]

  run('vit_jax.train', *PRETRAIN, cache, '--workdir=gs://bucket/straight',
      logs='straight')

  procs = start_processes('vit_jax.train', *PRETRAIN, cache, '--workdir=gs://bucket/run',
                          '--heartbeat_timeout=10', logs=tmp_path / 'killed',
                          env=env, cwd=here)
  wait_for_line(tmp_path / 'killed' / '0.out', 'step 12/24', proc=procs[0])
  procs[1].send_signal(signal.SIGKILL)
  killed = time.time()
  for proc in procs:
    proc.wait(timeout=300)
  # The survivor stops, within a minute (its heartbeat timeout is 10 s).
  assert procs[0].returncode != 0 and time.time() - killed < 60
  assert 'run/checkpoints/8/' in ' '.join(storage_emulator.objects('run/'))

  resumed = run('vit_jax.train', *PRETRAIN, cache, '--workdir=gs://bucket/run',
                logs='resumed')[0]
  assert 'resumed from step 8 in gs://bucket/run' in resumed
  # The bucket is read over HTTP into local copies: this process keeps no
  # GCS client (and so no client cache) of its own.
  straight, again = (transfer.read_orbax_params(str(storage_emulator.download(
      f'{name}/checkpoints/', tmp_path / 'copies' / name / 'checkpoints')))
                     for name in ('straight', 'run'))
  assert straight.keys() == again.keys()
  for key in straight:
    np.testing.assert_array_equal(again[key], straight[key], err_msg=key)

  names = storage_emulator.objects('run/')
  assert {'run/metrics.jsonl', 'run/config.json', 'run/labels.txt'} <= set(names)
  events = [n for n in names if n.startswith('run/tb/events.out.tfevents.')]
  assert len(events) == 2  # one per launch of process 0
  lines = [json.loads(l) for l in
           storage_emulator.read('run/metrics.jsonl').decode().splitlines()]
  assert lines[-1]['step'] == 24 and lines[-1]['eval/accuracy_examples'] == 360
  # Nothing lost to the kill: every logged step is in the bucket (steps 4
  # and 8 from the first launch, flushed with the checkpoint of step 8;
  # the rerun logs 12 on), in the JSON lines and in the TensorBoard events.
  logged = list(range(4, 25, 4))
  assert sorted({l['step'] for l in lines}) == logged
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  local = storage_emulator.download('run/tb/', tmp_path / 'copies' / 'tb')
  steps = {e.step for f in sorted(local.iterdir())
           for e in tf.compat.v1.train.summary_iterator(str(f))
           if any(v.tag == 'loss' for v in e.summary.value)}
  assert sorted(steps) == logged

  # On ArrayRecord data global batch i is the same on any process count,
  # so one process must compute what two computed.
  finetune = ['--config',
              f'{ROOT}/configs/finetune.py:model=nano/2,dataset={DATA},batch_size=64',
              '--config.init_from=gs://bucket/run', '--config.image_size=8',
              cache, '--config.total_steps=8', '--config.pp_eval=decode',
              '--config.schedule.warmup_steps=2', '--config.evals.accuracy.every_steps=8']
  run('vit_jax.finetune', *finetune, '--workdir=gs://bucket/ft', logs='finetune')
  (tmp_path / 'finetuned.npz').write_bytes(storage_emulator.read('ft/finetuned.npz'))
  exported = checkpoints.read_npz(str(tmp_path / 'finetuned.npz'))
  assert exported['head/kernel'].shape == (64, 10)
  # One process computes what the two computed.
  run_module('vit_jax.finetune', *finetune, f'--workdir={tmp_path / "ft1"}',
             env=env, cwd=here)
  alone = checkpoints.read_npz(str(tmp_path / 'ft1' / 'finetuned.npz'))
  assert alone.keys() == exported.keys()
  for key in alone:
    np.testing.assert_allclose(exported[key], alone[key], atol=1e-5, err_msg=key)

  probe = ['--config', f'{ROOT}/configs/fewshot.py:model=nano/2,dataset=digits,image_size=8',
           '--config.init_from=gs://bucket/ft/finetuned.npz']
  out = run('vit_jax.fewshot', *probe, '--workdir=gs://bucket/fewshot',
            logs='fewshot')[0]
  assert 'few-shot accuracy of gs://bucket/ft/finetuned.npz' in out
  assert storage_emulator.objects('fewshot/metrics.jsonl') == ['fewshot/metrics.jsonl']
  two = storage_emulator.read('fewshot/metrics.jsonl').decode().splitlines()
  run_module('vit_jax.fewshot', *probe, f'--workdir={tmp_path / "fewshot1"}',
             env=env, cwd=here)
  one = (tmp_path / 'fewshot1' / 'metrics.jsonl').read_text().splitlines()
  assert len(two) == 1 and json.loads(two[0]) == json.loads(one[0])
  assert list(here.iterdir()) == []
