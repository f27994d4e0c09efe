"""Op strings ('decode_inception_crop(224)|flip_lr|mixup(0.2)') parsed
into (name, arguments) pairs, without TensorFlow: the tf.data ops
(vit_jax/data/ops.py) and the NumPy ops of the Grain path
(vit_jax/data/image_ops.py) take the same strings."""

import ast
from typing import Callable


class OpRegistry:
  """The op factories of one pipeline by name: `@ops.example` for
  per-example ops, `@ops.batch` for batch ops (mixup, cutmix)."""

  def __init__(self):
    self.example_ops: dict[str, Callable] = {}
    self.batch_ops: dict[str, Callable] = {}

  def example(self, fn):
    self.example_ops[fn.__name__] = fn
    return fn

  def batch(self, fn):
    self.batch_ops[fn.__name__] = fn
    return fn


def hw(size) -> tuple[int, int]:
  """An op's size argument, 224 or (224, 160), as (height, width)."""
  return (size, size) if isinstance(size, int) else tuple(size)


def parse_op(spec: str) -> tuple[str, tuple]:
  """'resize(224)' -> ('resize', (224,)); 'flip_lr' -> ('flip_lr', ())."""
  spec = spec.strip()
  name, paren, rest = spec.partition('(')
  if not paren:
    return name, ()
  if not rest.endswith(')'):
    raise ValueError(f'bad op {spec!r}: expected name(arg, ...).')
  try:
    args = ast.literal_eval(f'({rest[:-1]},)') if rest[:-1].strip() else ()
  except (ValueError, SyntaxError) as e:
    raise ValueError(f'bad arguments in op {spec!r}: {e}; arguments must be '
                     f'Python literals, e.g. resize(224).') from None
  return name, args


def split_ops(spec: str, registry: OpRegistry) -> tuple[list, list, bool]:
  """The example ops and batch ops of `spec`, built from the factories in
  `registry`, and whether the string has its own `value_range`. Batch ops
  must come last."""
  example_ops, batch_ops = registry.example_ops, registry.batch_ops
  built_example, built_batch, has_range = [], [], False
  for item in filter(None, (s.strip() for s in spec.split('|'))):
    name, args = parse_op(item)
    if name in batch_ops:
      built_batch.append(batch_ops[name](*args))
    elif name in example_ops:
      if built_batch:
        raise ValueError(f'op {item!r} follows a batch op in {spec!r}; '
                         f'put {sorted(batch_ops)} last.')
      built_example.append(example_ops[name](*args))
      has_range |= name == 'value_range'
    else:
      raise ValueError(f'unknown op {name!r} in {spec!r}; known ops: '
                       f'{sorted(example_ops) + sorted(batch_ops)}.')
  return built_example, built_batch, has_range
