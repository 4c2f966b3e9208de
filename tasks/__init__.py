"""Thin entry point kept at the repository root: `import tasks` (as T5X and
SeqIO users write it) registers everything `hyperflax.tasks` does.

The registrations live in the installed package, so `import hyperflax.tasks`
works from any directory; this module only re-exports it.
"""

from hyperflax.tasks import *  # noqa: F401,F403
from hyperflax.tasks import __all__  # noqa: F401
