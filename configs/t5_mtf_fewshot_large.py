r"""Baseline T5-MTF-Few-shot (MetaICL-style): demonstrations and query concatenated, 1408 input tokens.

python -m hyperflax.train --config=configs/t5_mtf_fewshot_large.py --workdir=$WORKDIR
python -m hyperflax.train --config=configs/t5_mtf_fewshot_large.py:tiny --workdir=/tmp/t5_mtf_fewshot_large   # CPU smoke run
"""
from hyperflax.config_base import base_config, finish


def get_config(arg=None):
  c = base_config()
  c.method = 't5_mtf_fewshot'
  c.model.preset = 'large'
  return finish(c, arg)
