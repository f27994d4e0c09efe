"""Experiment configs load by path: the package never imports `configs`, so a
user's own `configs` package first on sys.path breaks no entry point."""

import os
import pathlib

import numpy as np
from PIL import Image

from process_runs import ROOT, run_module
from vit_jax.config.files import sibling


def test_no_module_of_the_package_imports_configs():
  sources = sorted(pathlib.Path(ROOT, 'vit_jax').rglob('*.py'))
  assert len(sources) > 30
  offenders = [str(p) for p in sources
               if any(line.lstrip().startswith(('from configs', 'import configs'))
                      for line in p.read_text().splitlines())]
  assert not offenders


def test_sibling_loads_the_file_next_to_the_config_once(tmp_path):
  (tmp_path / 'base.py').write_text('VALUE = [1]\n')
  (tmp_path / 'child.py').write_text('')
  first = sibling(str(tmp_path / 'child.py'), 'base')
  assert first.VALUE == [1] and sibling(str(tmp_path / 'child.py'), 'base') is first
  assert first.__file__ == str(tmp_path / 'base.py')


def test_entry_points_run_beside_a_users_own_configs_package(tmp_path):
  """From a directory whose own `configs/` package fails on import (and
  comes first on sys.path under `python -m`): pre-train, fine-tune,
  few-shot, predict and benchmark with the repository's configs."""
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / '__init__.py').write_text(
      "raise ImportError('the user configs package was imported')\n")
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': ROOT}

  def run(module, *args):
    return run_module(module, *args, env=env, cwd=tmp_path).stdout
  configs = pathlib.Path(ROOT, 'configs')
  short = ['--config.total_steps=4', '--config.schedule.warmup_steps=1',
           '--config.evals.accuracy.every_steps=4', '--config.checkpoint_steps=4']
  out = run('vit_jax.train', '--config', configs / 'demo.py', '--workdir', 'run',
            *short, '--config.evals.fewshot.every_steps=0')
  assert 'model nano/2, dataset digits' in out
  run('vit_jax.finetune', '--config', configs / 'demo_finetune.py',
      '--config.init_from=run', '--workdir', 'ft', *short)
  assert (tmp_path / 'ft' / 'finetuned.npz').exists()
  out = run('vit_jax.fewshot', '--config', configs / 'demo_fewshot.py',
            '--config.init_from=run', '--config.fewshot.shots=(1,)')
  assert 'digits' in out
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'blank.png')
  out = run('vit_jax.predict', '--model=ft', '--images=blank.png', '--top_k=1')
  assert '1 images predicted, 0 unreadable' in out
  run('vit_jax.benchmark', '--config', configs / 'demo.py', '--steps=1',
      '--warmup=1', '--peer=none')
