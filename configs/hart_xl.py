r"""HART prefixes for a frozen T5 v1.1 XL on S-NI (Def+2Pos), 20k steps (HART §4, appendix 8.1.3).

python -m hyperflax.train --config=configs/hart_xl.py --workdir=$WORKDIR
python -m hyperflax.train --config=configs/hart_xl.py:tiny --workdir=/tmp/hart_xl   # CPU smoke run
"""
from hyperflax.config_base import base_config, finish


def get_config(arg=None):
  c = base_config()
  c.model.preset = 'xl'
  c.hyper.kind = 'hart'
  c.hyper.decoder_layers = 8
  c.hyper.consistency_alpha = 10.0
  c.hyper.fusion_in_decoder = True
  c.data.name = 'sni_def_2pos'
  c.eval.name = 'sni_def_2pos'
  c.eval.split = 'test'
  c.train.num_steps = 20_000
  c.model.scan_layers = True
  c.model.remat = True
  c.train.grad_accum_steps = 8
  return finish(c, arg)
