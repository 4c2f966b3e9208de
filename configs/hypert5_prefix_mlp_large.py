r"""HyperT5-Prefix-MLP (paper appendix D): heads are a prefix-tuning reparameterisation.

python -m hyperflax.train --config=configs/hypert5_prefix_mlp_large.py --workdir=$WORKDIR \
    --config.hyper.init_from=$CACLM_WORKDIR   # a configs/caclm_prefix_mlp_large.py run
python -m hyperflax.train --config=configs/hypert5_prefix_mlp_large.py:tiny --workdir=/tmp/hypert5_prefix_mlp_large   # CPU smoke run
"""
from hyperflax.config_base import base_config, finish


def get_config(arg=None):
  c = base_config()
  c.model.preset = 'large'
  c.hyper.kind = 'prefix_mlp'
  # Hyperpretrained first (§4.2): --config.hyper.init_from=<caclm_prefix_mlp_large workdir>,
  # or --config.hyper.skip_hyperpretraining=True for §5.5's ablation.
  c.hyper.hyperpretrain_config = 'caclm_prefix_mlp_large'
  return finish(c, arg)
