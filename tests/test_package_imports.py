"""The package's import graph: no cycle, counting imports inside functions
too, so that no function-local import hides one."""

import ast
import os

import pytest

PACKAGE_ROOT = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'vit_jax')


def package_modules() -> dict[str, str]:
  """Module name -> file, for every module of vit_jax."""
  modules = {}
  for folder, _, files in os.walk(PACKAGE_ROOT):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        parts = os.path.relpath(path, os.path.dirname(PACKAGE_ROOT))[:-3].split(os.sep)
        if parts[-1] == '__init__':
          parts = parts[:-1]
        modules['.'.join(parts)] = path
  return modules


def imports_of(path: str, modules) -> set[str]:
  """The vit_jax modules a file imports, wherever the import statement is."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name in modules)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:
        child = f'{node.module}.{alias.name}'
        if child in modules:
          found.add(child)
        elif node.module in modules:
          found.add(node.module)
  return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for child in sorted(graph[node]):
      if child not in index:
        visit(child)
        low[node] = min(low[node], low[child])
      elif child in on_stack:
        low[node] = min(low[node], index[child])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1 or node in graph[node]:
        found.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return found


def import_graph() -> dict[str, set[str]]:
  modules = package_modules()
  return {name: imports_of(path, modules) for name, path in modules.items()}


def test_the_package_has_no_import_cycle():
  assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_local_import(tmp_path):
  (tmp_path / 'a.py').write_text('from vit_jax import b\n')
  (tmp_path / 'b.py').write_text('def f():\n  from vit_jax.c import thing\n')
  (tmp_path / 'c.py').write_text('import vit_jax.a\n')
  modules = {f'vit_jax.{n}': str(tmp_path / f'{n}.py') for n in 'abc'}
  graph = {name: imports_of(path, modules) for name, path in modules.items()}
  assert cycles(graph) == [['vit_jax.a', 'vit_jax.b', 'vit_jax.c']]


@pytest.mark.parametrize('layer,below', [
    ('vit_jax.models', ('vit_jax.training', 'vit_jax.data', 'vit_jax.evaluators',
                        'vit_jax.config', 'vit_jax.tools')),
    ('vit_jax.runtime', ('vit_jax.training', 'vit_jax.data', 'vit_jax.evaluators',
                         'vit_jax.config', 'vit_jax.models', 'vit_jax.tools')),
])
def test_lower_layers_do_not_import_higher_ones(layer, below):
  graph = import_graph()
  wrong = sorted((name, target) for name, targets in graph.items()
                 if name.startswith(layer) for target in targets
                 if target.startswith(below))
  assert wrong == []
