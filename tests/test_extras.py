"""The accelerator extras install the base pins' JAX: `.[tpu]` and `.[cuda]` / `.[cuda13]`.

The default run checks pyproject.toml itself (every extra names the base's jax
version; no torch outside the test extra). `pytest -m slow` also asks pip to
resolve each extra together with the base pins (`pip install --dry-run
--ignore-installed --report`, nothing installed): it needs PyPI. On the 2-core
dev VM, niced and shared: tpu 148 s, cuda 394 s, cuda13 274 s (13.6 min for all
three; the NVIDIA wheels' metadata dominates); alone, tpu took 68 s and cuda 220 s.
"""

import json
import os
import re
import subprocess
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as _f:
  PROJECT = tomllib.load(_f)['project']
BASE = dict(re.fullmatch(r'([\w.-]+)==([\w.]+)', d).groups() for d in PROJECT['dependencies'])
EXTRAS = PROJECT['optional-dependencies']
# What each extra must bring, besides the base pins (name -> version, None: any).
# Every accelerator extra also brings google-cloud-storage (orbax on gs:// workdirs).
GCS = {'google-cloud-storage': '3.17.1'}
EXPECTED = {'tpu': {'libtpu': '0.0.42.1', **GCS},
            'cuda': {'jax-cuda12-plugin': BASE['jax'], 'jax-cuda12-pjrt': BASE['jax'], **GCS},
            'cuda13': {'jax-cuda13-plugin': BASE['jax'], 'jax-cuda13-pjrt': BASE['jax'], **GCS}}


def test_extras_pin_the_base_jax_and_keep_torch_in_the_test_extra():
  assert BASE['jax'] == BASE['jaxlib']
  assert set(EXPECTED) <= set(EXTRAS)
  for extra in EXPECTED:
    jax_reqs = [r for r in EXTRAS[extra] if r.startswith('jax[')]
    assert jax_reqs == [f'jax[{"cuda12" if extra == "cuda" else extra}]=={BASE["jax"]}'], extra
    assert not any(r.startswith('torch') for r in EXTRAS[extra])
    assert f'google-cloud-storage=={GCS["google-cloud-storage"]}' in EXTRAS[extra], extra
  assert 'torch==2.13.0' in EXTRAS['test']


def _norm(name):  # PEP 503: ml_collections == ml-collections
  return re.sub(r'[-_.]+', '-', name).lower()


@pytest.mark.slow
@pytest.mark.parametrize('extra', sorted(EXPECTED))
def test_extra_resolves_with_the_base_pins(extra, tmp_path):
  report = tmp_path / 'report.json'
  done = subprocess.run([sys.executable, '-m', 'pip', 'install', '--dry-run', '--ignore-installed',
                         '--quiet', '--report', str(report), '-e', f'{ROOT}[{extra}]'],
                        capture_output=True, text=True, timeout=1200)
  assert done.returncode == 0, done.stderr[-3000:]
  chosen = {_norm(i['metadata']['name']): i['metadata']['version']
            for i in json.loads(report.read_text())['install']}
  for name, version in {**BASE, **EXPECTED[extra]}.items():
    assert chosen.get(_norm(name)) == version, (name, chosen.get(_norm(name)), version)
  assert not [n for n in chosen if n.startswith('torch')]  # no CUDA torch comes along
