r"""HyperT5-Prefix-MLP (paper appendix D): heads are a prefix-tuning reparameterisation.

python -m hyperflax.train --config=configs/hypert5_prefix_mlp_large.py --workdir=$WORKDIR
python -m hyperflax.train --config=configs/hypert5_prefix_mlp_large.py:tiny --workdir=/tmp/hypert5_prefix_mlp_large   # CPU smoke run
"""
from hyperflax.config_base import base_config, finish


def get_config(arg=None):
  c = base_config()
  c.model.preset = 'large'
  c.hyper.kind = 'prefix_mlp'
  return finish(c, arg)
