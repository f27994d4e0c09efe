"""Loading experiment configs (`configs/*.py`) by path.

Config files that build on another one (`demo.py` on `pretrain.py`) load it
with `sibling(__file__, 'pretrain')`: by its path next to them, never as a
`configs` package on sys.path, where a user's own `configs/` would stand in
for ours (with `python -m`, the working directory comes first).
"""

import importlib.util
import os
import sys
import types


def sibling(config_file: str, name: str) -> types.ModuleType:
  """The config module `<name>.py` in the folder of `config_file` (a config
  module's `__file__`), loaded once per path."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f'{name}.py')
  key = f'_vit_jax_config:{path}'
  if key not in sys.modules:
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or not os.path.exists(path):
      raise FileNotFoundError(f'config {path!r} does not exist.')
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
  return sys.modules[key]
