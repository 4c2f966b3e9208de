r"""Baseline T5-MTF (LoRA): one shared LoRA for all tasks, frozen T5.

python -m hyperflax.train --config=configs/t5_mtf_lora_large.py --workdir=$WORKDIR
python -m hyperflax.train --config=configs/t5_mtf_lora_large.py:tiny --workdir=/tmp/t5_mtf_lora_large   # CPU smoke run
"""
from hyperflax.config_base import base_config, finish


def get_config(arg=None):
  c = base_config()
  c.model.preset = 'large'
  c.hyper.kind = 'shared_lora'
  return finish(c, arg)
