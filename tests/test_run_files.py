"""Files a run grows (metrics.jsonl, TensorBoard events) without TensorFlow's
writer: the events are read back by TensorBoard's and TensorFlow's own
readers, which check every record's CRC."""

import json

import numpy as np
import pytest

from tiny_jobs import tiny_config
from vit_jax.data.synthetic import BatchIterator, SyntheticSource
from vit_jax.training import checkpointer
from vit_jax.training import event_files as tensorboard_events
from vit_jax.training import growing_files as run_files
from vit_jax.training import loop as trainer
from vit_jax.training import metrics


def test_crc32c_matches_the_published_check_value():
  # RFC 3720 (iSCSI), B.4: CRC-32C of 32 zero bytes and of "123456789".
  assert tensorboard_events.crc32c(bytes(32)) == 0x8A9136AA
  assert tensorboard_events.crc32c(b'123456789') == 0xE3069283


def write_run(workdir):
  writer = metrics.MetricWriter(str(workdir))
  writer.write(1, {'loss': 2.5, 'eval/accuracy': 0.125})
  writer.write(20, {'loss': 1.25})
  writer.close()
  # A resumed run adds to metrics.jsonl and starts a second event file.
  writer = metrics.MetricWriter(str(workdir))
  writer.write(30, {'loss': -0.5})
  writer.close()


def test_tensorboard_reads_every_scalar(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  write_run(tmp_path)
  lines = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert lines == [{'step': 1, 'loss': 2.5, 'eval/accuracy': 0.125},
                   {'step': 20, 'loss': 1.25}, {'step': 30, 'loss': -0.5}]
  accumulator = event_accumulator.EventAccumulator(str(tmp_path / 'tb'))
  accumulator.Reload()
  assert sorted(accumulator.Tags()['scalars']) == ['eval/accuracy', 'loss']
  assert [(e.step, e.value) for e in accumulator.Scalars('loss')] == [
      (1, 2.5), (20, 1.25), (30, -0.5)]
  assert [(e.step, e.value) for e in accumulator.Scalars('eval/accuracy')] == [
      (1, 0.125)]


def test_tensorflow_reader_checks_the_crcs(tmp_path):
  tf = pytest.importorskip('tensorflow')
  write_run(tmp_path)
  files = sorted((tmp_path / 'tb').iterdir())
  assert len(files) == 2
  events = [e for f in files
            for e in tf.compat.v1.train.summary_iterator(str(f))]
  assert events[0].file_version == 'brain.Event:2'
  scalars = [(e.step, v.tag, v.simple_value) for e in events
             for v in e.summary.value]
  assert scalars == [(1, 'loss', 2.5), (1, 'eval/accuracy', 0.125),
                     (20, 'loss', 1.25), (30, 'loss', -0.5)]
  # One flipped byte in a record is caught by the reader's CRC check.
  data = bytearray(files[0].read_bytes())
  data[-10] ^= 0xFF
  files[0].write_bytes(bytes(data))
  with pytest.raises(Exception, match='(?i)corrupt|checksum|crc'):
    list(tf.compat.v1.train.summary_iterator(str(files[0])))


def test_a_full_event_file_continues_in_a_new_one(tmp_path, monkeypatch):
  monkeypatch.setattr(tensorboard_events, 'MAX_FILE_BYTES', 200)
  writer = tensorboard_events.EventWriter(tmp_path)
  for step in range(10):
    writer.write(step, {'loss': float(step)})
  writer.close()
  files = sorted(p.name for p in tmp_path.iterdir())
  assert len(files) > 2 and files[1] == files[0] + '.1'
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  accumulator = event_accumulator.EventAccumulator(str(tmp_path))
  accumulator.Reload()
  assert [e.value for e in accumulator.Scalars('loss')] == list(np.arange(10.))


def test_remote_files_are_rewritten_whole_at_most_every_interval(tmp_path, monkeypatch):
  written = []
  monkeypatch.setattr(run_files, "is_remote", lambda path: True)
  growing = run_files.GrowingFile(tmp_path / 'log', flush_seconds=3600)
  monkeypatch.setattr(type(growing.path), 'write_bytes',
                      lambda self, data: written.append(data))
  growing.append(b'a')
  growing.flush()
  growing.append(b'b')
  growing.flush()
  assert written == []  # within the interval nothing is uploaded
  growing.close()
  assert written == [b'ab']


@pytest.mark.parametrize('remote', [False, True])
def test_a_line_cut_short_by_a_kill_is_removed_when_the_file_is_reopened(
    tmp_path, monkeypatch, caplog, remote):
  if remote:  # rewritten whole, as in a bucket
    monkeypatch.setattr(run_files, 'is_remote', lambda path: True)
  path = tmp_path / 'metrics.jsonl'
  path.write_bytes(b'{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.3')
  growing = run_files.GrowingFile(path, lines=True)
  growing.append(b'{"step": 2, "loss": 2.25}\n')
  growing.close()
  assert [json.loads(l) for l in path.read_text().splitlines()] == [
      {'step': 1, 'loss': 2.5}, {'step': 2, 'loss': 2.25}]
  assert [r.getMessage().split(' ended in')[1] for r in caplog.records] == [
      ' a line cut short (23 bytes, from a run that was killed): removed']


def test_metrics_up_to_a_checkpoint_are_in_the_bucket_when_it_is_saved(
    tmp_path, monkeypatch):
  """A kill right after a checkpoint must not lose a metrics line of a step
  the rerun will not repeat: the objects are rewritten before each save."""
  monkeypatch.setattr(run_files, 'is_remote', lambda path: True)
  seen_at_save = {}
  save = checkpointer.StateCheckpointer.save

  def save_and_look(self, step, *args, **kwargs):
    lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
    seen_at_save[step] = [json.loads(l)['step'] for l in lines]
    return save(self, step, *args, **kwargs)
  monkeypatch.setattr(checkpointer.StateCheckpointer, 'save', save_and_look)
  config = tiny_config({'steps': 4, 'checkpoint_steps': 2,
                        'async_checkpoints': False})
  trainer.train(config, str(tmp_path), train_data=BatchIterator(SyntheticSource(
      num_classes=10, image_size=16, batch_size=16)), log=lambda _: None)
  assert seen_at_save == {2: [1, 2], 4: [1, 2, 3, 4]}
