"""Loading experiment configs (`configs/*.py`) by path.

Config files that build on another one (`demo.py` on `pretrain.py`) load it
with `sibling(__file__, 'pretrain')`: by its path next to them, never as a
`configs` package on sys.path, where a user's own `configs/` would stand in
for ours (with `python -m`, the working directory comes first).
"""

import importlib.util
import os
import sys
import traceback
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


# This checkout's configs, for the error that a relative --config path
# does not exist from the current directory.
CHECKOUT_CONFIGS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    'configs')


def path_of(config_flag: str) -> str:
  """'configs/pretrain.py:model=B/16' -> 'configs/pretrain.py'."""
  path, _, _ = config_flag.partition('.py:')
  return path if path.endswith('.py') else path + ('.py' if ':' in config_flag else '')


def file_problem(config_flag: str) -> str | None:
  """Why the file of a --config value cannot be loaded (missing, or not
  Python), as the lines to show; None when it can be."""
  path = path_of(config_flag)
  if not os.path.exists(path):
    hint = ''
    if not os.path.isabs(path) and os.path.isdir(CHECKOUT_CONFIGS):
      hint = (f'; the configs of this checkout are in {CHECKOUT_CONFIGS}, e.g. '
              f'--config {os.path.join(CHECKOUT_CONFIGS, "demo.py")}')
    return (f'--config {config_flag}: no file {path} (paths are relative to '
            f'the current directory, {os.getcwd()}){hint}.')
  try:
    with open(path) as f:
      compile(f.read(), path, 'exec')
  except SyntaxError as e:
    lines = [f'{path}:{e.lineno}: SyntaxError: {e.msg} (the --config file)']
    if e.text:
      lines += ['    ' + e.text.rstrip('\n'),
                '    ' + ' ' * max((e.offset or 1) - 1, 0) + '^']
    return '\n'.join(lines)
  return None


def _chain(error: BaseException) -> list[BaseException]:
  chain = [error]
  while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
    chain.append(chain[-1].__cause__ or chain[-1].__context__)
  return chain


def raised_by(config_flag: str, error: BaseException) -> bool:
  """Whether loading the --config file raised `error` (its get_config, or
  ml_collections reporting it)."""
  path = os.path.abspath(path_of(config_flag))
  return str(error).startswith(f'flag --config={config_flag}:') or any(
      os.path.abspath(frame.filename) == path for e in _chain(error)
      for frame in traceback.extract_tb(e.__traceback__))


def load_problem(config_flag: str, error: BaseException) -> str:
  """The error a config file's get_config raised, as one line: where in the
  config file and what (the innermost exception of the flag's chain)."""
  innermost = _chain(error)[-1]
  path = os.path.abspath(path_of(config_flag))
  frames = [f for f in traceback.extract_tb(innermost.__traceback__)
            if os.path.abspath(f.filename) == path]
  where = f'{path_of(config_flag)}:{frames[-1].lineno}: ' if frames and not isinstance(
      innermost, ValueError) else ''
  message = str(innermost).splitlines()[0] if str(innermost) else ''
  kind = '' if isinstance(innermost, ValueError) else f'{type(innermost).__name__}: '
  return f'--config {config_flag}: {where}{kind}{message}'
