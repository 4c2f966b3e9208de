"""Single-task PEFT tuning from a given initialisation (HyperTuning §6).

The PEFT parameters of one task (batch axis 1, broadcast to every row) are
trained against a frozen T5; `Tuning` knows each method's parameterisation
(Prefix-Flat, Prefix-MLP, LoRA) and its random / shared / hypermodel-generated
initialisations; `make_tuner` compiles one training loop (a `lax.scan`) that a
whole learning-rate x seed sweep reuses. `hyperflax.peft_tuning` runs the sweep
and writes Table 6.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyperflax import hyper as hyper_lib
from hyperflax.model import T5, T5Config
from hyperflax.model import peft as peft_lib
from hyperflax.model import xent
from hyperflax.training.experiment import Experiment

Array = jax.Array
METHODS = ('prefix', 'prefix_mlp', 'lora')
INITS = ('random', 'shared', 'hyper')
METHOD_LABELS = {'prefix': 'Prefix-Flat', 'prefix_mlp': 'Prefix-MLP', 'lora': 'LoRA'}
INIT_LABELS = {'random': 'Rand Init', 'shared': 'Shared Init', 'hyper': 'Hyper Init'}
# The generator kind that provides each (method, init).
SOURCE_KIND = {('prefix', 'shared'): 'shared_prefix', ('prefix_mlp', 'shared'): 'shared_prefix',
               ('lora', 'shared'): 'shared_lora', ('prefix', 'hyper'): 'prefix',
               ('prefix_mlp', 'hyper'): 'prefix_mlp', ('lora', 'hyper'): 'lora'}
_ONE_TOKEN = np.ones((1, 1), np.int32)  # the shared generators ignore their input


@dataclasses.dataclass
class GeneratorRun:
  """A trained PEFT generator (hypermodel or shared baseline).

  Attributes:
    exp: its Experiment (method 'hypermodel').
    params: its trained generator parameters (`trainable['hyper']`).
    workdir: where it was loaded from ('' if built in memory).
    compiler_options: XLA options of its jitted `apply` (tests: quick compiles).
  """
  exp: Experiment
  params: Any
  workdir: str = ''
  compiler_options: dict | None = None
  _apply: Callable | None = dataclasses.field(default=None, repr=False)

  @property
  def kind(self) -> str:
    return self.exp.hyper_config.kind

  def generate(self, hyper_inputs) -> tuple[dict, dict]:
    """(peft, aux) for `hyper_inputs` [B, T] (jitted once per run)."""
    if self._apply is None:
      self._apply = jax.jit(self.exp.hyper.apply, compiler_options=self.compiler_options)
    return self._apply({'params': self.params}, jnp.asarray(hyper_inputs, jnp.int32))


def load_run(workdir: str) -> GeneratorRun:
  """Loads a `hyperflax.train` workdir of a hypermodel or shared baseline."""
  from hyperflax.train import load_run_config, load_trainable
  path = os.path.join(workdir, 'config.json')
  config = load_run_config(workdir, 'hypermodel')
  exp = Experiment.from_config(config)
  if exp.hyper_config.fusion_in_decoder:
    raise ValueError(f'{path}: fusion_in_decoder generators change the downstream input; '
                     'their PEFT alone cannot be tuned')
  return GeneratorRun(exp, jax.tree.map(jnp.asarray, load_trainable(workdir)['hyper']), workdir)


# ---- parameterisations --------------------------------------------------------

def _split_lora(peft: dict) -> tuple[dict, dict]:
  """LoRA slots -> (trainable {a, b}, fixed {gate = 1}).

  A generated per-layer gate (HyperT5-LoRA's tanh gate) is folded into b, as the PEFT
  export does: every init then tunes the same plain LoRA. Kept apart and fixed, a gate of
  ~0.01 (what the demo's hypermodels learn) would shrink every update of the delta a
  hundredfold against the random and shared inits' gate of 1."""
  theta, gates = {}, {}
  for path, leaf in peft_lib.flatten(peft).items():
    (gates if path.endswith('/gate') else theta)[path] = leaf
  fixed = {}
  for path, a in list(theta.items()):
    if path.endswith('/a'):
      gate = path[:-1] + 'gate'
      if gate in gates:
        b = path[:-1] + 'b'
        theta[b] = peft_lib.gated_b(theta[b], gates[gate].astype(theta[b].dtype))
      fixed[gate] = jnp.ones(a.shape[:2], a.dtype)
  return peft_lib.unflatten(theta), peft_lib.unflatten(fixed)


@dataclasses.dataclass
class Tuning:
  """One PEFT method for one frozen T5: initialisation, forward, train, score.

  Attributes:
    method: 'prefix', 'prefix_mlp' or 'lora'.
    t5_config: the downstream config.
    prefix_len: P (prefix methods).
    lora_rank: R (LoRA).
    head_hidden: the Prefix-MLP hidden width (None: d_model).
  """
  method: str
  t5_config: T5Config
  prefix_len: int = 8
  lora_rank: int = 4
  head_hidden: int | None = None

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f'method={self.method!r}; known: {METHODS}')
    self.t5 = T5(self.t5_config)
    self.mlp = hyper_lib.SharedPrefix(hyper_lib.HyperConfig(
        kind='shared_prefix', prefix_len=self.prefix_len, head_hidden=self.head_hidden),
        self.t5_config)
    self.random_lora = hyper_lib.SharedLoRA(hyper_lib.HyperConfig(
        kind='shared_lora', lora_rank=self.lora_rank), self.t5_config)

  # (theta, fixed): theta is trained; fixed is part of the init (LoRA gates).
  def peft(self, theta, fixed) -> dict:
    """The one task's PEFT slots, batch axis 1."""
    if self.method == 'prefix_mlp':
      return self.mlp.apply({'params': theta}, _ONE_TOKEN)[0]
    if self.method == 'lora':
      return peft_lib.merge(theta, fixed)
    return theta

  def initial(self, init: str, seed: int = 0, run: GeneratorRun | None = None,
              hyper_inputs: Array | None = None) -> tuple[dict, dict]:
    """(theta, fixed) of `init`; `run` is the generator of SOURCE_KIND[(method, init)],
    `hyper_inputs` [1, T] the task's few-shot string (hyper init)."""
    if init not in INITS:
      raise ValueError(f'init={init!r}; known: {INITS}')
    if init == 'random':
      key = jax.random.PRNGKey(seed)
      if self.method == 'lora':
        params = self.random_lora.init(key, _ONE_TOKEN)['params']
        return _split_lora(self.random_lora.apply({'params': params}, _ONE_TOKEN)[0])
      params = nn.unbox(self.mlp.init(key, _ONE_TOKEN)['params'])
      if self.method == 'prefix_mlp':
        return params, {}
      return self.mlp.apply({'params': params}, _ONE_TOKEN)[0], {}
    want = SOURCE_KIND[(self.method, init)]
    if run is None or run.kind != want:
      raise ValueError(f'{self.method} ({init} init) needs a trained {want!r} generator, got '
                       f'{None if run is None else run.kind!r}')
    if init == 'shared':
      if self.method == 'prefix_mlp':
        return jax.tree.map(jnp.asarray, nn.unbox(run.params)), {}
      peft, _ = run.generate(_ONE_TOKEN)
      return _split_lora(peft) if self.method == 'lora' else (peft, {})
    if hyper_inputs is None:
      raise ValueError('hyper init needs the task\'s hyper_inputs')
    peft, aux = run.generate(hyper_inputs[:1])
    if self.method == 'prefix_mlp':
      return hyper_lib.shared_prefix_from_hypermodel(run.params, aux['embeddings']), {}
    return _split_lora(peft) if self.method == 'lora' else (peft, {})

  # ---- pure functions ----------------------------------------------------------

  def hidden(self, theta, fixed, downstream, batch) -> Array:
    """[B, T, D] final decoder states of the frozen T5 with the task's PEFT on every row (the
    loss and scores go through `xent` from here: no [B, T, V] array, issue 14)."""
    peft = peft_lib.broadcast_to_batch(self.peft(theta, fixed), batch['encoder_inputs'].shape[0])
    return self.t5.apply({'params': downstream}, batch['encoder_inputs'],
                         batch['decoder_inputs'], peft=peft, deterministic=True,
                         return_hidden=True)

  def loss(self, theta, fixed, downstream, batch) -> Array:
    loss_sum, weight_sum = xent.loss_sums(self.hidden(theta, fixed, downstream, batch),
                                          xent.lm_head_kernel(downstream), batch['targets'],
                                          batch['target_weights'])
    return loss_sum / jnp.maximum(weight_sum, 1.0)

  def score(self, tuned: dict, downstream, batch) -> Array:
    """[B] summed target log-likelihood (as `step.make_score_step`)."""
    return xent.target_loglik(self.hidden(tuned['theta'], tuned['fixed'], downstream, batch),
                              xent.lm_head_kernel(downstream), batch['targets'],
                              batch['target_weights'])

  def generate(self, tuned: dict, downstream, batch, max_decode_length: int) -> Array:
    from hyperflax.model.decoding import greedy_decode
    peft = peft_lib.broadcast_to_batch(self.peft(tuned['theta'], tuned['fixed']),
                                       batch['encoder_inputs'].shape[0])
    return greedy_decode(self.t5_config, downstream, batch['encoder_inputs'],
                         max_decode_length, peft=peft)


def optimizer(learning_rate, total_steps: int, schedule: str = 'constant',
              weight_decay: float = 0.0) -> optax.GradientTransformation:
  """AdamW after clipping to norm 1; `learning_rate` may be traced (one compile per sweep)."""
  if schedule == 'linear':
    learning_rate = optax.linear_schedule(learning_rate, 0.0, max(1, total_steps))
  elif schedule != 'constant':
    raise ValueError(f'schedule={schedule!r}; known: constant, linear')
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(learning_rate, weight_decay=weight_decay))


def make_tuner(tuning: Tuning, total_steps: int, schedule: str = 'constant',
               weight_decay: float = 0.0, compiler_options: dict | None = None
               ) -> tuple[Callable, Callable]:
  """Jitted `init_opt(theta, lr)` and `tune(theta, opt_state, fixed, downstream,
  pool, order [S, B] int32, lr) -> (theta, opt_state, losses [S])`: S steps of
  minibatches `pool[order[s]]`, one `lax.scan`, compiled once per shape."""
  grad_fn = jax.value_and_grad(tuning.loss)

  def init_opt(theta, lr):
    return optimizer(lr, total_steps, schedule, weight_decay).init(theta)

  def tune(theta, opt_state, fixed, downstream, pool, order, lr):
    opt = optimizer(lr, total_steps, schedule, weight_decay)

    def body(carry, idx):
      theta, opt_state = carry
      loss, grads = grad_fn(theta, fixed, downstream, jax.tree.map(lambda x: x[idx], pool))
      updates, opt_state = opt.update(grads, opt_state, theta)
      return (optax.apply_updates(theta, updates), opt_state), loss

    (theta, opt_state), losses = jax.lax.scan(body, (theta, opt_state), order)
    return theta, opt_state, losses

  return (jax.jit(init_opt, compiler_options=compiler_options),
          jax.jit(tune, compiler_options=compiler_options))


def minibatch_order(num_examples: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
  """[steps, batch] example indices: shuffled epochs, a pure function of the seed."""
  rng = np.random.default_rng(seed)
  flat = np.concatenate([rng.permutation(num_examples)
                         for _ in range(-(-steps * batch_size // num_examples))])
  return flat[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)
