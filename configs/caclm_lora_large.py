r"""Hyperpretraining (CACLM, HyperTuning §4.2) of HyperT5-LoRA on C4 for a frozen T5 v1.1 Large.

100k steps on 512-token windows of one C4 document each (A|B|C|D = 176|32|128|176
tokens); the MTF configs hypert5_lora_large and hypert5_plus_lora_large start from
this run's workdir (hyper.init_from).

python -m hyperflax.train --config=configs/caclm_lora_large.py --workdir=$WORKDIR
python -m hyperflax.train --config=configs/caclm_lora_large.py:tiny --workdir=/tmp/caclm_lora_large   # CPU smoke run
"""
from hyperflax.config_base import base_config, finish


def get_config(arg=None):
  c = base_config()
  c.model.preset = 'large'
  c.hyper.kind = 'lora'
  c.data.name = 'caclm_c4'
  # What the default segments need: <A-sentinel> A <D-sentinel> D </s> for the
  # hypermodel, B </s> for the frozen T5 (B = 32, §4.2), C as the target.
  c.data.lengths = (176 + 176 + 3, 32 + 1, 128)
  c.train.num_steps = 100_000
  c.eval.name = ''
  c.hyper.lora_rank = 8
  return finish(c, arg)
