r"""Hyperpretraining (CACLM, hypertuning §4.2) of HyperT5-Prefix on C4 for a frozen T5 v1.1 Large.

python -m hyperflax.train --config=configs/caclm_prefix_large.py --workdir=$WORKDIR
python -m hyperflax.train --config=configs/caclm_prefix_large.py:tiny --workdir=/tmp/caclm_prefix_large   # CPU smoke run
"""
from hyperflax.config_base import base_config, finish


def get_config(arg=None):
  c = base_config()
  c.model.preset = 'large'
  c.hyper.kind = 'prefix'
  c.data.name = 'caclm_c4'
  c.data.lengths = (512, 32, 128)
  c.train.num_steps = 100_000
  c.eval.name = ''
  return finish(c, arg)
