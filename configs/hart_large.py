r"""HART (autoregressive prefixes, consistency regularisation, fusion-in-decoder) on T5 v1.1 Large, P3.

python -m hyperflax.train --config=configs/hart_large.py --workdir=$WORKDIR
python -m hyperflax.train --config=configs/hart_large.py:tiny --workdir=/tmp/hart_large   # CPU smoke run
"""
from hyperflax.config_base import base_config, finish


def get_config(arg=None):
  c = base_config()
  c.model.preset = 'large'
  c.hyper.kind = 'hart'
  c.hyper.decoder_layers = 8
  c.hyper.consistency_alpha = 10.0
  c.hyper.fusion_in_decoder = True
  return finish(c, arg)
