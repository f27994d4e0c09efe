"""python -m vit_jax.export on a trained workdir: the parameters round-trip
exactly in every .npz layout with the run's class names beside them;
unknown formats are one error line."""

import numpy as np

from process_runs import run_module
from vit_jax.formats import exporters, npz, run_record, saved_model


def test_export_a_workdir_in_each_npz_layout_round_trips(demo_run, tmp_path):
  trained = saved_model.load(f'{demo_run}@100')
  for layout in ('vit_jax', 'big_vision'):
    out = tmp_path / f'{layout}.npz'
    result = run_module('vit_jax.export', f'--model={demo_run}@100',
                        f'--format={layout}', f'--out={out}')
    assert result.stdout.splitlines()[-1].startswith(f'exported {out} ({layout})')
    flat = npz.read_npz(str(out))
    assert ('pos_embedding' in flat) == (layout == 'big_vision')
    assert run_record.read_labels(run_record.labels_beside(str(out))) == [
        str(i) for i in range(10)]
    back = saved_model.load(str(out), config=trained.config)
    expected = npz.flatten_params(trained.params)
    got = npz.flatten_params(back.params)
    assert sorted(got) == sorted(expected)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_unknown_format_is_one_error_line(tmp_path):
  out = run_module('vit_jax.export', f'--model={tmp_path}', '--format=onnx',
                   f'--out={tmp_path / "m"}', check=False)
  assert out.returncode == 2
  assert out.stderr.strip() == ("error: --format='onnx': expected one of "
                                f"{', '.join(exporters.EXPORTERS)}.")
  assert not (tmp_path / 'm').exists()
