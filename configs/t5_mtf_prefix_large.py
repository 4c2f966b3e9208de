r"""Baseline T5-MTF (Prefix): one shared Prefix-MLP-reparameterised prefix for all tasks, frozen T5.

python -m hyperflax.train --config=configs/t5_mtf_prefix_large.py --workdir=$WORKDIR
python -m hyperflax.train --config=configs/t5_mtf_prefix_large.py:tiny --workdir=/tmp/t5_mtf_prefix_large   # CPU smoke run
"""
from hyperflax.config_base import base_config, finish


def get_config(arg=None):
  c = base_config()
  c.model.preset = 'large'
  c.hyper.kind = 'shared_prefix'
  return finish(c, arg)
