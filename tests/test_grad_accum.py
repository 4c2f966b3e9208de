"""Gradient accumulation: the micro-batch loop (with its weight barrier, issue 14) takes the
step one full batch takes."""

import jax
import numpy as np


def test_two_micro_batches_equal_one_batch():
  from hyperflax.train import train_stream
  from hyperflax.training.experiment import Experiment
  from hyperflax.training.optim import make_optimizer
  from hyperflax.training.step import create_state, make_train_step
  from hyperflax.pipeline import load_config
  config = load_config('hypert5_prefix_large', 'tiny')
  config.data.batch_size = 4
  config.model.dropout_rate = 0.0  # each micro batch draws its own dropout mask
  config.hyper.dropout_rate = 0.0
  config.optim.eps = 1e-3  # else AdamW's first step is ~lr * sign(g): float noise in tiny g flips it
  config.model.overrides.num_layers = 1
  config.model.overrides.num_decoder_layers = 1
  exp = Experiment.from_config(config)
  optimizer = make_optimizer(config, 4)
  batch = next(train_stream(config, exp, 0))
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(0))
  trainable, frozen = exp.init(init_rng)
  state = create_state(exp, optimizer, trainable, state_rng, batch)
  out = {k: jax.jit(make_train_step(exp, optimizer, k))(state, frozen, batch) for k in (1, 2)}
  (one, m1), (two, m2) = out[1], out[2]
  np.testing.assert_allclose(float(m2['loss']), float(m1['loss']), rtol=1e-5)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                                       one.trainable, state.trainable))
  assert max(moved) > 0  # the step did update the weights
  for a, b in zip(jax.tree.leaves(two.trainable), jax.tree.leaves(one.trainable)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6, rtol=1e-5)
