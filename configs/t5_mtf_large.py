r"""Baseline T5-MTF: the T5 v1.1 Large itself, multi-task fine-tuned on queries only (no demonstrations).

python -m hyperflax.train --config=configs/t5_mtf_large.py --workdir=$WORKDIR
python -m hyperflax.train --config=configs/t5_mtf_large.py:tiny --workdir=/tmp/t5_mtf_large   # CPU smoke run
"""
from hyperflax.config_base import base_config, finish


def get_config(arg=None):
  c = base_config()
  c.method = 't5_mtf'
  c.model.preset = 'large'
  return finish(c, arg)
