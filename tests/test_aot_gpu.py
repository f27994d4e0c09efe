"""The real train step compiled for an NVIDIA GPU on a machine without one
(python -m vit_jax.aot --topology h100): ViT-B/16 in bfloat16 at 224 px
takes cuDNN's fused attention forward and backward for its 197 tokens.
Needs JAX's CUDA plugin (pip install -e ".[gpu-aot]"); without it the tool
says how to install it."""

import json

import pytest

from process_runs import run_module
from vit_jax.tools.aot import cuda_plugin_installed

HAS_CUDA_PLUGIN = cuda_plugin_installed()


@pytest.mark.skipif(not HAS_CUDA_PLUGIN, reason="JAX's CUDA plugin is not installed")
def test_vit_b16_bf16_compiles_for_an_h100_with_cudnn_attention():
  out = run_module('vit_jax.aot', '--config',
                   'configs/pretrain.py:model=B/16,batch_size=256',
                   '--config.model.dtype=bfloat16', '--topology', 'h100',
                   '--json', timeout=900)
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report['device_kind'] == 'NVIDIA H100 80GB HBM3'
  assert report['attention'] == 'cudnn'  # the default on a GPU
  kernels = report['kernels']
  assert kernels['cudnn_attention_forward'] == 12
  assert kernels['cudnn_attention_backward'] == 12
  assert kernels['cublaslt_gemms'] > 0
  assert report['fits'] and report['total_gib'] < 40


@pytest.mark.skipif(HAS_CUDA_PLUGIN, reason="JAX's CUDA plugin is installed")
def test_a_gpu_target_without_the_plugin_says_how_to_install_it():
  out = run_module('vit_jax.aot', '--config', 'configs/demo.py',
                   '--topology', 'h100', check=False, timeout=300)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == (
      "error: --topology h100 compiles with JAX's CUDA plugin, which is not "
      'installed; pip install -e ".[gpu-aot]".')
