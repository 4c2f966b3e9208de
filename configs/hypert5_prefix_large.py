r"""HyperT5-Prefix on a frozen T5 v1.1 Large, multi-task fine-tuned on P3 (hypertuning §5).

python -m hyperflax.train --config=configs/hypert5_prefix_large.py --workdir=$WORKDIR
python -m hyperflax.train --config=configs/hypert5_prefix_large.py:tiny --workdir=/tmp/hypert5_prefix_large   # CPU smoke run
"""
from hyperflax.config_base import base_config, finish


def get_config(arg=None):
  c = base_config()
  c.model.preset = 'large'
  c.hyper.kind = 'prefix'
  c.hyper.init_from = ''  # set to a caclm_prefix_large workdir (hyperpretraining)
  return finish(c, arg)
