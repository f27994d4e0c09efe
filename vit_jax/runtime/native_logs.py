"""Native libraries' log lines that tell a user nothing, kept off the console.

TensorFlow (2.19 and later) logs through absl's C++ logging before anything
initializes it, so `TF_CPP_MIN_LOG_LEVEL` no longer silences its import
banner (the oneDNN notice, the CPU-feature notice) or the rendezvous warning
that accompanies every image that fails to decode. Those lines go straight
to file descriptor 2; the only place to drop them is there. Everything else
written to it meanwhile is passed on, in order, when the block ends.
"""

import contextlib
import importlib
import os
import re
import sys
import tempfile

# The lines dropped: absl's notice that it is not initialized, and the
# notices of TensorFlow's CPU build, oneDNN and tf.data/eager rendezvous,
# with the indented node lines that continue the last.
_NOISE = re.compile(
    r'WARNING: All log messages before absl::InitializeLog\(\) is called'
    r'|[IWE]\d{4} [\d:.]+\s+\d+ (port|cpu_feature_guard|local_rendezvous)\.cc:\d+\]'
    r'|To enable the following instructions: .* rebuild TensorFlow')


def kept_lines(text: str) -> str:
  """`text` without the noise lines (and the indented lines that continue one)."""
  kept, dropping = [], False
  for line in text.splitlines(keepends=True):
    if _NOISE.match(line) or (dropping and line[:1] in ' \t'):
      dropping = True
      continue
    dropping = False
    kept.append(line)
  return ''.join(kept)


@contextlib.contextmanager
def native_noise_dropped():
  """Within the block, file descriptor 2 goes to a temporary file; at its
  end what was written there, less the noise, goes on to the real stderr."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      text = kept_lines(captured.read().decode(errors='replace'))
      if text:
        sys.stderr.write(text)
        sys.stderr.flush()


def import_tensorflow():
  """`import tensorflow`, without its import banner."""
  if 'tensorflow' in sys.modules:
    return sys.modules['tensorflow']
  with native_noise_dropped():
    return importlib.import_module('tensorflow')


def import_tensorflow_datasets():
  """`import tensorflow_datasets` (which imports TensorFlow), without the banner."""
  import_tensorflow()
  return importlib.import_module('tensorflow_datasets')
