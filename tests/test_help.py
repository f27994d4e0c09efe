"""--help on every entry point: exit 0, what the command does, its flags
with their defaults, and with --config the config's keys, values and
descriptions, ready to paste as overrides."""

import concurrent.futures

from process_runs import run_module

ENTRY_POINTS = {
    'vit_jax.train': (['--config', 'configs/demo.py', '--config.total_steps=20'],
                      ['--workdir', '--config.total_steps=20']),
    'vit_jax.finetune': (['--config', 'configs/demo_finetune.py'], ['--config.init_from=']),
    'vit_jax.fewshot': (['--config', 'configs/demo_fewshot.py'], ['--config.fewshot.shots=']),
    'vit_jax.predict': ([], ['--images', '--top_k', 'With --config FILE']),
    'vit_jax.export': ([], ['--format', '--out']),
    'vit_jax.aot': ([], ['--topology', '--json']),
    'vit_jax.benchmark': ([], ['--steps', '--peer']),
    'vit_jax.summary': ([], ['--model', '--image_size']),
}


def test_every_entry_point_explains_itself():
  def help_of(module):
    args, _ = ENTRY_POINTS[module]
    return module, run_module(module, *args, '--help', check=False, timeout=300)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    outputs = dict(pool.map(help_of, ENTRY_POINTS))
  for module, (_, expected) in ENTRY_POINTS.items():
    out = outputs[module]
    assert out.returncode == 0, (module, out.stderr[-2000:])
    assert f'python -m {module}' in out.stdout, module
    assert '\nflags:\n  --config: ' in out.stdout, module
    for text in expected:
      assert text in out.stdout, (module, text)
  # Config keys come with their values (overrides applied) and descriptions.
  lines = outputs['vit_jax.train'].stdout.splitlines()
  line = next(l for l in lines if l.startswith('  --config.total_steps='))
  assert line.split() == ['--config.total_steps=20']
  on_corrupt = next(l for l in lines if l.startswith('  --config.on_corrupt='))
  assert on_corrupt.split(None, 1) == [
      "--config.on_corrupt='stop'", "or 'skip' (counted as data/skipped_images)"]
