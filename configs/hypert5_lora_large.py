r"""HyperT5-LoRA on a frozen T5 v1.1 Large, multi-task fine-tuned on P3.

python -m hyperflax.train --config=configs/hypert5_lora_large.py --workdir=$WORKDIR \
    --config.hyper.init_from=$CACLM_WORKDIR   # a configs/caclm_lora_large.py run
python -m hyperflax.train --config=configs/hypert5_lora_large.py:tiny --workdir=/tmp/hypert5_lora_large   # CPU smoke run
"""
from hyperflax.config_base import base_config, finish


def get_config(arg=None):
  c = base_config()
  c.model.preset = 'large'
  c.hyper.kind = 'lora'
  c.hyper.lora_rank = 8
  # Hyperpretrained first (§4.2): --config.hyper.init_from=<caclm_lora_large workdir>,
  # or --config.hyper.skip_hyperpretraining=True for §5.5's ablation.
  c.hyper.hyperpretrain_config = 'caclm_lora_large'
  return finish(c, arg)
