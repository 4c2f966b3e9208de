"""hyperflax: hypermodels that write PEFT parameters for a frozen T5 v1.1, in JAX/Flax.

Importing this package does not import TensorFlow; only `hyperflax.data`'s
SeqIO registrations (`tasks/`) do.
"""

# First, before an import starts a thread that would take a malloc arena of its own:
# XLA:CPU's per-call buffers stay mapped between calls (see host_memory).
from hyperflax import host_memory as _host_memory

_host_memory.keep_freed_memory()

from hyperflax.model import PRESETS, T5, T5Config, preset  # noqa: E402
from hyperflax.pretrained import load_pretrained  # noqa: E402

__all__ = ['PRESETS', 'T5', 'T5Config', 'load_pretrained', 'preset']
__version__ = '0.1.0'
