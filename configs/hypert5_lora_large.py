r"""HyperT5-LoRA on a frozen T5 v1.1 Large, multi-task fine-tuned on P3.

python -m hyperflax.train --config=configs/hypert5_lora_large.py --workdir=$WORKDIR
python -m hyperflax.train --config=configs/hypert5_lora_large.py:tiny --workdir=/tmp/hypert5_lora_large   # CPU smoke run
"""
from hyperflax.config_base import base_config, finish


def get_config(arg=None):
  c = base_config()
  c.model.preset = 'large'
  c.hyper.kind = 'lora'
  c.hyper.lora_rank = 8
  return finish(c, arg)
