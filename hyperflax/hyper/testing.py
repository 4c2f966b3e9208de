"""Random stand-ins for tests and CPU smoke runs: frozen T5 parameters, token batches."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hyperflax.model.config import T5Config
from hyperflax.model.transformer import T5

# Quicker XLA compiles for tests that only compare runs of equal programs.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def random_t5_params(config: T5Config, seed: int = 0) -> dict:
  """T5 parameters drawn in numpy from `jax.eval_shape` shapes (no init compile).

  Norm scales are near 1, embeddings N(0, 1), kernels N(0, 1/fan_in): a
  model with sensible activations, float32 numpy leaves like `load_pretrained`.
  """
  tokens = jnp.ones((1, 4), jnp.int32)
  shapes = nn.unbox(jax.eval_shape(
      lambda: T5(config).init(jax.random.key(0), tokens, tokens))['params'])
  rng = np.random.default_rng(seed)

  def make(path, leaf):
    name = jax.tree_util.keystr(path)
    if 'scale' in name:
      return (1 + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
    fan_in = leaf.shape[-2] if leaf.ndim >= 2 else 1  # scanned kernels: [layers, in, out]
    std = 1.0 if 'embedding' in name else fan_in ** -0.5
    return (std * rng.standard_normal(leaf.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(make, shapes)


def random_tokens(seed: int, batch: int, length: int, vocab_size: int,
                  pad_from: list[int] | None = None) -> jax.Array:
  """[batch, length] int32 ids in [2, vocab); row i is padding from pad_from[i] on."""
  tokens = np.random.default_rng(seed).integers(2, vocab_size, (batch, length))
  for row, start in enumerate(pad_from or []):
    tokens[row, start:] = 0
  return jnp.asarray(tokens, jnp.int32)


def toy_batch(config: T5Config, batch: int = 2, hyper_len: int = 9, input_len: int = 6,
              target_len: int = 5, seed: int = 10) -> dict[str, jax.Array]:
  """A batch with the trainer's keys; the last row of each input is padded."""
  pad = lambda length: [length] * (batch - 1) + [max(1, length * 2 // 3)]
  targets = random_tokens(seed + 1, batch, target_len, config.vocab_size)
  return {'hyper_inputs': random_tokens(seed, batch, hyper_len, config.vocab_size,
                                        pad(hyper_len)),
          'encoder_inputs': random_tokens(seed + 2, batch, input_len, config.vocab_size,
                                          pad(input_len)),
          'decoder_inputs': jnp.pad(targets[:, :-1], [(0, 0), (1, 0)]),
          'targets': targets,
          'target_weights': jnp.ones((batch, target_len), jnp.float32)}
