"""hyperflax: hypermodels that write PEFT parameters for a frozen T5 v1.1, in JAX/Flax.

Importing this package does not import TensorFlow; only `hyperflax.data`'s
SeqIO registrations (`tasks/`) do.
"""

from hyperflax.model import PRESETS, T5, T5Config, preset
from hyperflax.pretrained import load_pretrained

__all__ = ['PRESETS', 'T5', 'T5Config', 'load_pretrained', 'preset']
__version__ = '0.1.0'
