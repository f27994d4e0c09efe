"""Which JAX platforms the entry points start on this host."""

import glob
import importlib.util
import os

# Device files of accelerators JAX may use besides TPUs.
_OTHER_ACCELERATORS = ('/dev/nvidia0', '/dev/kfd')
_TPU_DEVICES = ('/dev/accel*', '/dev/vfio/[0-9]*')


def skip_absent_tpu() -> None:
  """Starts JAX on the CPU of a host that has libtpu installed but no TPU.

  libtpu (installed for the AOT tool, `python -m vit_jax.aot`) makes JAX
  start its TPU plugin on any host, which prints initialization errors
  where there is no TPU. An explicit JAX_PLATFORMS, TPU chips, or GPUs
  leave the choice to JAX. Call before JAX starts its backends.
  """
  if os.environ.get('JAX_PLATFORMS') or importlib.util.find_spec('libtpu') is None:
    return
  if any(glob.glob(pattern) for pattern in _TPU_DEVICES):
    return
  if any(os.path.exists(path) for path in _OTHER_ACCELERATORS):
    return
  # JAX only on a host that needs the switch; the checks above are cheap.
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_platforms', 'cpu')
