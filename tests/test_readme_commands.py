"""The README's shell commands, run as typed in the set-up's environment.

Every command line of the README's indented code blocks is either run here
(in README order, so later commands find what earlier ones wrote) or
listed in NOT_HERE with the reason it cannot run on this machine; a new
command that is neither fails the test, so the README cannot drift from
what works. Commands run through bash with the set-up's virtual environment
active (its bin/ first on PATH), from the checkout, with `/tmp/` moved into
the test's directory and the step counts cut by the flags in SHORTER.
"""

import os
import re
import subprocess
import sys

from process_runs import ROOT

# Commands (by a fragment of their text) that need what this machine lacks.
NOT_HERE = {
    'pytest': 'the test command itself',
    'dataset=imagenet': 'ImageNet is not on this machine',
    'gs://': 'no Cloud Storage bucket here (gs:// is tested against an emulator)',
    'launch/tpu_pod.sh': 'needs gcloud and a TPU slice (tests/test_launch.py runs its dry runs)',
    'export TPU_NAME': 'the TPU launcher\'s settings',
    '--topology v5p': 'a 13-minute H/14 compile (tests/test_aot*.py compile small models)',
    '--peer timm': 'B/16 at batch 256 against PyTorch (tests/test_benchmark.py runs a tiny one)',
    'data=PATH': 'PATH is the user\'s folder (tests/test_own_images.py runs this config on photos)',
}

# Appended to a command that contains the key, to make it short. Each must
# be used by at least one command.
SHORTER = {
    'configs/demo.py': ('--config.total_steps=20 --config.schedule.warmup_steps=2 '
                        '--config.checkpoint_steps=10 --config.log_steps=10 '
                        '--config.evals.accuracy.every_steps=20 '
                        '--config.evals.fewshot.every_steps=0'),
    'configs/demo_finetune.py': ('--config.total_steps=4 --config.schedule.warmup_steps=1 '
                                 '--config.checkpoint_steps=4 --config.log_steps=2 '
                                 '--config.evals.accuracy.every_steps=4'),
}
# The demo's steps named in the README, moved to those of the short run.
STEPS = {'@1000': '@10'}


def readme_commands():
  """The command lines of the README's indented code blocks (continuations
  joined, comments cut), skipping Python code, in order."""
  lines = open(os.path.join(ROOT, 'README.md')).read().splitlines()
  commands, previous_blank, in_block, pending = [], True, False, ''
  for line in lines:
    if line.startswith('    ') and (in_block or previous_blank):
      in_block = True
      text = pending + line.strip()
      if text.endswith('\\'):
        pending = text[:-1]
        continue
      pending = ''
      text = re.sub(r'\s+#\s.*$', '', text)
      if re.match(r'(python3? |\.venv/bin/python |launch/\S+\.sh |export [A-Z_]+=)', text):
        commands.append(text)
    else:
      in_block = False
    previous_blank = not line.strip()
  return commands


def as_run_here(command, tmp_path):
  """The command with its set-up part (venv, pip) dropped, /tmp moved and
  its steps cut; None where NOT_HERE names it."""
  if any(fragment in command for fragment in NOT_HERE):
    return None
  command = command.split(' && ')[-1]  # the set-up line: venv and pip are done
  for key, flags in SHORTER.items():
    if re.search(re.escape(key) + r'(\s|$)', command):
      command += ' ' + flags
  for old, new in STEPS.items():
    command = command.replace(old, new)
  return command.replace('/tmp/', f'{tmp_path}/')


def test_readme_parsing_sees_every_block():
  commands = readme_commands()
  # The set-up lines open the README; the digits predict block has three.
  assert commands[0].startswith('python3 -m venv .venv && ')
  assert commands[1].endswith('.venv/bin/python -m pytest -n 2 tests')
  assert any(c.startswith('python -m vit_jax.predict --model /tmp/vit_demo '
                          '--images /tmp/digits_png --top_k 3') for c in commands)
  assert not any(c.startswith(('from ', 'import ', 'model =')) for c in commands)


def test_readme_commands_run_as_typed(tmp_path):
  venv_bin = os.path.dirname(sys.executable)
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'VIRTUAL_ENV': os.path.dirname(venv_bin),
         'PATH': venv_bin + os.pathsep + os.environ.get('PATH', '')}
  ran, used = [], set()
  for command in readme_commands():
    runnable = as_run_here(command, tmp_path)
    if runnable is None:
      continue
    used.update(key for key in SHORTER if key in command)
    # `.venv/bin/python` in the set-up line is the environment's python.
    runnable = runnable.replace('.venv/bin/python ', 'python ')
    out = subprocess.run(['bash', '-c', runnable], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f'{command}\n-> {runnable}\n{out.stderr[-3000:]}'
    assert 'Traceback' not in out.stderr, f'{command}\n{out.stderr[-3000:]}'
    # No native library's start-up banner (TensorFlow's oneDNN and CPU
    # notices, absl's logging notice) on the console.
    assert not re.search(r'oneDNN|absl::InitializeLog|cpu_feature_guard',
                         out.stderr), f'{command}\n{out.stderr[-3000:]}'
    ran.append(command)
  assert used == set(SHORTER)
  # The main job, the digits converted and the main job on them,
  # fine-tuning, predict (files, scoring, attention), the three exports and
  # both few-shot probes.
  assert len(ran) == 13, ran
  assert (tmp_path / 'vit_demo' / 'checkpoints').is_dir()
  assert (tmp_path / 'vit_finetune' / 'finetuned.npz').is_file()
  assert (tmp_path / 'preds.jsonl').read_text().count('\n') == 360
  assert any((tmp_path / 'attention').iterdir())
  for exported in ('vit_demo.npz', 'step1000.npz', 'vit_demo_hf/config.json'):
    assert (tmp_path / exported).is_file()
