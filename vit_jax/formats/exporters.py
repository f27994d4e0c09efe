"""Export formats by name, for `config.export` (written at the end of
fine-tuning) and `python -m vit_jax.export` (any trained model).

A format names the module that writes it. The module has
  OUT_NAME       the file or folder it writes into a workdir
  export(params, model_config, out, *, labels, image_size, pp_eval,
         format_name) -> None, or a line saying what the export could not
         keep of the run (e.g. its preprocessing)
and may have `refusal(model_config) -> str | None`, the reason a model
cannot be written in that format (checked before a run starts). A new
format is one module and one line here.
"""

import importlib

EXPORTERS = {
    'vit_jax': 'vit_jax.formats.npz',  # .npz in the official release's layout
    'big_vision': 'vit_jax.formats.npz',  # .npz in big_vision's layout
    'hf': 'vit_jax.formats.hf',  # a Hugging Face transformers ViT directory
}


def names_in(export: str) -> list[str]:
  """'vit_jax,hf' -> ['vit_jax', 'hf']."""
  return [name.strip() for name in export.split(',') if name.strip()]


def module_of(name: str):
  return importlib.import_module(EXPORTERS[name])


def refusal(name: str, model_config) -> str | None:
  check = getattr(module_of(name), 'refusal', None)
  return check(model_config) if check else None


def out_name(name: str) -> str:
  return module_of(name).OUT_NAME


def export(name: str, params, model_config, out: str, *,
           labels: list[str] | None, image_size: int,
           pp_eval: str | None = None) -> str | None:
  """Writes host `params` (a plain tree) in format `name` at `out`;
  returns what the format could not keep of the run, or None."""
  return module_of(name).export(params, model_config, out, labels=labels,
                                image_size=image_size, pp_eval=pp_eval,
                                format_name=name)
