"""Start-up checks: a full-size config refuses a CPU backend and a random frozen T5, each
naming its override; `:tiny` configs pass; what a run logs about where it runs."""

import glob
import logging
import os
import subprocess
import sys

import jax
import pytest

from hyperflax import runtime, sharding
from hyperflax.config_base import base_config, tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py')))
CPU_OVERRIDE = '--config.runtime.allow_cpu=True'
INIT_FIELD, INIT_OPT_IN = '--config.model.init_from=', '--config.model.allow_random_init=True'


def _load(name, arg=None):
  sys.path.insert(0, os.path.dirname(__file__))
  from test_configs import load
  return load(name, arg)


@pytest.mark.parametrize('name', CONFIGS)
def test_every_full_config_refuses_cpu_and_random_t5_and_its_tiny_variant_passes(name):
  full = _load(name)
  with pytest.raises(ValueError) as refused:
    runtime.preflight(full, backend='cpu')
  message = str(refused.value)
  assert '\n' not in message
  assert CPU_OVERRIDE in message and INIT_FIELD in message and INIT_OPT_IN in message
  assert runtime.problems(_load(name, 'tiny'), backend='cpu') == []


def test_each_refusal_alone_and_the_opt_ins():
  config = _load('hart_xl')
  assert runtime.problems(config, backend='tpu') == [p for p in runtime.problems(
      config, backend='cpu') if INIT_FIELD in p]  # on an accelerator: only the random T5
  with config.unlocked():
    config.model.init_from = '/weights/t5_v1_1_xl'
  assert runtime.problems(config, backend='gpu') == []
  (cpu,) = runtime.problems(config, backend='cpu')
  assert CPU_OVERRIDE in cpu and "model.init_from='/weights/t5_v1_1_xl'" in cpu
  config.runtime.allow_cpu = True
  runtime.preflight(config, backend='cpu')
  # A run config written before these fields existed is not opted in.
  legacy = tiny(base_config())
  del legacy['runtime']
  assert [CPU_OVERRIDE in p for p in runtime.problems(legacy, backend='cpu')] == [True]


def test_full_size_with_opt_ins_proceeds():
  config = _load('hypert5_lora_large')
  config.runtime.allow_cpu = True
  config.model.allow_random_init = True
  runtime.preflight(config)  # this machine's own (CPU) backend
  from hyperflax.training.experiment import Experiment
  exp = Experiment.from_config(config)  # what train() builds next (no parameters yet)
  assert (exp.t5_config.d_model, exp.t5_config.num_layers) == (1024, 24)  # T5 v1.1 Large


def test_train_cli_refuses_a_full_config_on_cpu_in_one_line_before_writing(tmp_path):
  workdir = tmp_path / 'run'
  done = subprocess.run([sys.executable, '-m', 'hyperflax.train', '--config=configs/hart_xl.py',
                         f'--workdir={workdir}'], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert done.returncode == 2, done.stderr[-2000:]
  lines = [line for line in done.stderr.splitlines() if 'error:' in line]
  assert len(lines) == 1 and 'Traceback' not in done.stderr
  assert CPU_OVERRIDE in lines[0] and INIT_FIELD in lines[0] and INIT_OPT_IN in lines[0]
  assert not workdir.exists()


def test_log_runtime_says_backend_devices_process_and_mesh(caplog):
  mesh = sharding.make_mesh(tiny(base_config()))
  with caplog.at_level(logging.INFO, logger='hyperflax.runtime'):
    info = runtime.log_runtime(mesh)
  assert info['backend'] == jax.default_backend() == 'cpu'
  assert info['device_count'] == jax.device_count() and info['process_count'] == 1
  assert info['mesh'] == {k: int(v) for k, v in mesh.shape.items()}
  (line,) = [r.getMessage() for r in caplog.records if r.name == 'hyperflax.runtime']
  assert line.startswith(f'runtime: backend cpu ({jax.devices()[0].device_kind}), '
                         f'{jax.device_count()} devices') and 'process 0 of 1' in line
  assert f"mesh {info['mesh']}" in line
  assert line.endswith(f"host malloc {info['host_malloc']}")
  assert info['host_malloc'].startswith(('keeps freed memory', 'glibc defaults ('))
