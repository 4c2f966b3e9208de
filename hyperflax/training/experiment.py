"""What is trained and how it is applied, built from an ml_collections config.

Methods (`config.method`):
  'hypermodel'      a PEFT generator (`config.hyper.kind`: prefix, prefix_mlp,
                    lora, hart, or the shared_prefix / shared_lora baselines)
                    in front of the frozen downstream T5. With
                    `config.train_downstream=True` the T5 is trained too
                    (the paper's HyperT5+ variants).
  't5_mtf'          the downstream T5 itself, reading only the query (T5-MTF).
  't5_mtf_fewshot'  the downstream T5 reading demonstrations + query
                    concatenated (T5-MTF-Few-shot / MetaICL).

Trainable parameters live in `trainable = {'hyper': ..., 'downstream': ...}`
(only the parts being trained); frozen ones in `frozen`, which is an argument
of every step, never differentiated and never in the optimiser state.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from hyperflax import hyper as hyper_lib
from hyperflax.model import T5, T5Config, init_params, preset
from hyperflax.model import hf

Array = jax.Array
METHODS = ('hypermodel', 't5_mtf', 't5_mtf_fewshot')


def t5_config_from(config: ml_collections.ConfigDict) -> T5Config:
  m = config.model
  overrides = dict(dtype=m.get('dtype', 'float32'), scan_layers=m.get('scan_layers', False),
                   remat=m.get('remat', False))
  if m.get('dropout_rate', None) is not None:
    overrides['dropout_rate'] = m.dropout_rate
  if m.get('init_from', ''):
    path = os.path.join(m.init_from, 'config.json')
    if not os.path.exists(path):
      raise FileNotFoundError(f'config.model.init_from={m.init_from!r}: no config.json there')
    return T5Config.from_json_file(path, **overrides)
  extra = dict(m.get('overrides', {}) or {})
  return preset(m.preset, **overrides, **extra)


def hyper_config_from(config: ml_collections.ConfigDict) -> hyper_lib.HyperConfig | None:
  if config.method != 'hypermodel':
    return None
  h = dict(config.hyper)
  for key in ('init_from', 'init_backbone', 'hyperpretrain_config',
              'skip_hyperpretraining', 'backbone_from'):  # trainer-level fields
    h.pop(key, None)
  fields = {f.name for f in dataclasses.fields(hyper_lib.HyperConfig)}
  unknown = sorted(set(h) - fields)
  if unknown:
    raise ValueError(f'config.hyper: unknown fields {unknown}; known: {sorted(fields)}')
  return hyper_lib.HyperConfig(**h)


@dataclasses.dataclass
class Experiment:
  """Models and the pure forward function of one training configuration."""
  config: ml_collections.ConfigDict
  t5_config: T5Config
  hyper_config: hyper_lib.HyperConfig | None

  def __post_init__(self):
    if self.config.method not in METHODS:
      raise ValueError(f'config.method={self.config.method!r}; known: {METHODS}')
    self.t5 = T5(self.t5_config)
    # The generator's backbone is an unscanned copy of the T5 layout (its
    # weights are copied layer by layer from the downstream checkpoint).
    self.hyper_t5_config = self.t5_config.replace(scan_layers=False)
    self.hyper = (hyper_lib.build_hypermodel(self.hyper_config, self.hyper_t5_config)
                  if self.hyper_config else None)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'Experiment':
    return cls(config, t5_config_from(config), hyper_config_from(config))

  @property
  def method(self) -> str:
    return self.config.method

  @property
  def trains_downstream(self) -> bool:
    return self.method != 'hypermodel' or bool(self.config.get('train_downstream', False))

  @property
  def data_mode(self) -> str:
    mode = self.config.data.get('mode', '')
    if mode:
      # Only the shared PEFT baselines may read another input than their own.
      own = None if self.method == 'hypermodel' and not self.hyper_config.uses_backbone \
          else self._own_mode()
      if own is not None:
        if mode != own:
          raise ValueError(f'config.data.mode={mode!r}: {self.method} reads {own!r} inputs; '
                           'only the shared_prefix / shared_lora baselines may change it')
      elif mode not in ('zero_shot', 'concat'):
        raise ValueError(f"config.data.mode={mode!r}: allowed '', 'zero_shot', 'concat'")
      return mode
    return self._own_mode()

  def _own_mode(self) -> str:
    if self.method == 't5_mtf_fewshot':
      return 'concat'
    if self.method == 't5_mtf' or not self.hyper_config.uses_backbone:
      return 'zero_shot'
    return 'hyper'

  # ---- parameters ---------------------------------------------------------

  def load_downstream(self, rng: Array) -> dict:
    path = self.config.model.get('init_from', '')
    if path:
      from hyperflax.pretrained import load_pretrained
      _, params = load_pretrained(path, scan_layers=self.t5_config.scan_layers)
      return jax.tree.map(jnp.asarray, params)
    logging.info('config.model.init_from is empty: the downstream T5 starts random')
    params = init_params(self.t5_config.replace(scan_layers=False), rng)
    return hf.stack_layers(params, self.t5_config) if self.t5_config.scan_layers else params

  def load_backbone(self) -> dict | None:
    """The T5 of `config.hyper.backbone_from` (HART-FLAN-T5), checked to have the
    frozen model's shape; None when the backbone copies the frozen T5."""
    path = self.config.hyper.get('backbone_from', '')
    if not path or self.hyper is None or not self.hyper_config.uses_backbone:
      return None
    from hyperflax.pretrained import load_pretrained
    theirs = t5_config_from(ml_collections.ConfigDict(
        {'model': {'init_from': path, 'dtype': 'float32'}}))
    for field in ('d_model', 'd_kv', 'num_heads', 'd_ff', 'num_layers', 'vocab_size'):
      if getattr(theirs, field) != getattr(self.t5_config, field):
        raise ValueError(f'config.hyper.backbone_from={path!r}: {field}='
                         f'{getattr(theirs, field)} but the frozen T5 has '
                         f'{getattr(self.t5_config, field)} (the backbone must have its width)')
    if theirs.num_decoder_layers < self.hyper_config.backbone_config(
        self.hyper_t5_config).num_decoder_layers:
      raise ValueError(f'config.hyper.backbone_from={path!r}: {theirs.num_decoder_layers} '
                       'decoder layers, fewer than the hypermodel keeps')
    _, params = load_pretrained(path, scan_layers=False)
    return jax.tree.map(jnp.asarray, params)

  def init_frozen(self, rng: Array) -> dict:
    """The `frozen` tree `init(rng)` returns, without building the trainable one
    (nor loading `hyper.backbone_from`): for loaders that restore the trainable."""
    down_rng, _ = jax.random.split(rng)
    return {} if self.trains_downstream else {'downstream': self.load_downstream(down_rng)}

  def init(self, rng: Array, backbone: dict | None = None) -> tuple[dict, dict]:
    """Returns (trainable, frozen) parameter trees; `backbone` (unscanned T5
    parameters, default `load_backbone()`) replaces the frozen T5 as the source
    of the hypermodel's backbone."""
    down_rng, hyper_rng = jax.random.split(rng)
    downstream = self.load_downstream(down_rng)
    trainable, frozen = {}, {}
    if self.hyper is not None:
      backbone_src = downstream
      if self.t5_config.scan_layers:
        backbone_src = hf.unstack_layers(downstream, self.t5_config)
      if backbone is None:
        backbone = self.load_backbone()
      if backbone is not None:
        backbone_src = backbone
      trainable['hyper'] = hyper_lib.init_hypermodel(
          self.hyper_config, self.hyper_t5_config, hyper_rng,
          t5_params=backbone_src if self.config.hyper.get('init_backbone', True) else None)
    (trainable if self.trains_downstream else frozen)['downstream'] = downstream
    # Copied backbone weights must not alias the frozen arrays: the train step
    # donates the trainable buffers.
    trainable = jax.tree.map(lambda x: jnp.array(x, copy=True), trainable)
    return trainable, frozen

  def param_axes(self) -> dict:
    """Logical-axis PartitionSpecs of `trainable` and `frozen` (for sharding)."""
    import flax.linen as nn
    from hyperflax.model import abstract_params
    axes = {'downstream': nn.get_partition_spec(abstract_params(self.t5_config))}
    if self.hyper is not None:
      axes['hyper'] = hyper_lib.param_axes(self.hyper_config, self.hyper_t5_config)
    return axes

  # ---- forward ------------------------------------------------------------

  def generate_peft(self, hyper_params, hyper_inputs: Array, deterministic: bool = True,
                    rng: Array | None = None, shared_demos: bool = False) -> tuple[Any, dict]:
    """Runs the generator. With `shared_demos` (every row holds the same task
    and demonstrations, as in evaluation) it runs once on row 0 and the result
    is given to every row: the adapter is computed once per task."""
    rngs = None if deterministic else {'dropout': rng}
    batch = hyper_inputs.shape[0]
    if shared_demos:
      hyper_inputs = hyper_inputs[:1]
    peft, aux = self.hyper.apply({'params': hyper_params}, hyper_inputs,
                                 deterministic=deterministic, rngs=rngs)
    if shared_demos:
      widen = lambda x: jnp.broadcast_to(x, (batch,) + x.shape[1:])
      peft = jax.tree.map(widen, peft)
      aux = {k: widen(v) for k, v in aux.items() if k in ('fusion_states', 'fusion_mask')}
    return peft, aux

  def forward(self, trainable: dict, frozen: dict, batch: dict[str, Array], *,
              deterministic: bool = True, rng: Array | None = None,
              peft=None, aux=None, shared_demos: bool = False,
              return_hidden: bool = False) -> tuple[Array, dict]:
    """Logits [B, T, V] for `batch`, and the generator's aux outputs.

    `peft`/`aux` may be given precomputed (a stored adapter); otherwise the
    generator runs on `batch['hyper_inputs']`. With `return_hidden` the
    decoder's final states [B, T, D] come instead of logits (for the fused
    cross-entropy of `hyperflax.model.xent`).
    """
    rng = jax.random.PRNGKey(0) if rng is None else rng
    hyper_rng, t5_rng = jax.random.split(rng)
    downstream = trainable.get('downstream', frozen.get('downstream'))
    if self.hyper is not None and peft is None:
      hyper_inputs = batch.get('hyper_inputs')
      if hyper_inputs is None:  # shared kinds ignore their input
        hyper_inputs = jnp.ones((batch['encoder_inputs'].shape[0], 1), jnp.int32)
        shared_demos = True
      peft, aux = self.generate_peft(trainable['hyper'], hyper_inputs, deterministic, hyper_rng,
                                     shared_demos)
    aux = aux or {}
    rngs = None if deterministic else {'dropout': t5_rng}
    logits = self.t5.apply({'params': downstream}, batch['encoder_inputs'],
                           batch['decoder_inputs'], peft=peft,
                           fusion_states=aux.get('fusion_states'),
                           fusion_mask=aux.get('fusion_mask'),
                           deterministic=deterministic, rngs=rngs,
                           return_hidden=return_hidden)
    return logits, aux
