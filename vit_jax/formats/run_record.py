"""What a run leaves beside its checkpoints so that it describes itself:
the resolved config (`config.json`) and the class names (`labels.txt`, one
per line, in label order). An exported `.npz` gets its labels beside it
(`finetuned.npz` -> `finetuned.labels.txt`). Whatever loads a model later
(`vit_jax.predict`, the Hugging Face export) reads them back from here.
"""

import json

from etils import epath
import ml_collections

from vit_jax.runtime.paths import write_atomically

CONFIG_FILE = 'config.json'
LABELS_FILE = 'labels.txt'


def default_labels(num_classes: int) -> list[str]:
  """The class names of data that has none: '0'..'N-1'."""
  return [str(i) for i in range(num_classes)]


def class_names(source, num_classes: int) -> list[str]:
  """The data's class names (TFDS label names, folder names), or the
  default labels where the data has none (or not as many as the config's
  classes)."""
  names = list(getattr(source, 'class_names', None) or [])
  if len(names) != num_classes:
    return default_labels(num_classes)
  return names


def write_labels(path: str, labels: list[str]) -> None:
  bad = [name for name in labels if '\n' in name]
  if bad:
    raise ValueError(f'class names with line breaks cannot go in a labels '
                     f'file: {bad[:3]}')
  write_atomically(path, ''.join(f'{name}\n' for name in labels))


def write(workdir: str, config: ml_collections.ConfigDict,
          labels: list[str]) -> None:
  """Writes config.json and labels.txt into `workdir` (call on process 0)."""
  directory = epath.Path(workdir)
  directory.mkdir(parents=True, exist_ok=True)
  write_atomically(directory / CONFIG_FILE,
                   config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  write_labels(str(directory / LABELS_FILE), labels)


def read_labels(path: str) -> list[str] | None:
  file = epath.Path(path)
  if not file.exists():
    return None
  return file.read_text().splitlines()


def read_config(path: str) -> ml_collections.ConfigDict | None:
  file = epath.Path(path)
  if not file.exists():
    return None
  return ml_collections.ConfigDict(json.loads(file.read_text()))


def labels_beside(npz_path: str) -> str:
  """'DIR/finetuned.npz' -> 'DIR/finetuned.labels.txt'."""
  stem = npz_path[:-len('.npz')] if npz_path.endswith('.npz') else npz_path
  return f'{stem}.labels.txt'
