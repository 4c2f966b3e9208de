import os
import sys

# Tests import the helper modules next to them (hf_fixtures.py).
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# Tests check numbers, not speed, and most of their time is XLA compiling
# tiny programs: compile with LLVM's cheap pipeline (about a third less CPU
# time). Set before any test module imports jax; subprocesses inherit it.
_FAST = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _FAST).strip()

# glibc's own malloc settings, not hyperflax's default (hyperflax/host_memory.py): those
# make compiling, most of the suite's time, 6-14 % slower. Subprocesses inherit it;
# tests/test_host_memory.py runs every mode explicitly.
os.environ.setdefault('HYPERFLAX_HOST_MALLOC', 'default')
