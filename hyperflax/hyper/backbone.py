"""The hypermodel's T5 backbone, and the copy of pretrained T5 weights into it.

The encoder reads the few-shot input; the decoder (optionally truncated to its
first N layers) reads learned input embeddings instead of tokens and
cross-attends to the encoder output. It runs either in parallel (non-causal,
HyperT5) or autoregressively with a key/value cache (HART, two states per step).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperflax.model.config import T5Config
from hyperflax.model.layers import _normal, param_with_axes
from hyperflax.model.transformer import Decoder, Encoder

Array = jax.Array


class Backbone(nn.Module):
  """T5 encoder + T5 decoder over `num_inputs` learned input embeddings.

  Parameter names match `T5` (`token_embedder`, `encoder`, `decoder`) so that
  `copy_t5_weights` is a plain subtree copy.

  Attributes:
    config: the backbone's T5 config (`HyperConfig.backbone_config`).
    num_inputs: learned decoder input embeddings (2P, 3L, or 2 for HART).
  """
  config: T5Config
  num_inputs: int

  def setup(self):
    cfg = self.config
    self.token_embedder = nn.Embed(
        cfg.vocab_size, cfg.d_model,
        embedding_init=nn.with_logical_partitioning(_normal(1.0), ('vocab', 'embed')),
        param_dtype=jnp.float32, dtype=cfg.compute_dtype)
    self.encoder = Encoder(cfg, self.token_embedder)
    # Non-causal: the hypermodel does not generate text (HyperT5 §4.1). HART
    # reuses these parameters in a causal, cached copy (`decode_autoregressive`).
    self.decoder = Decoder(cfg, embedder=None, causal=False)
    # Same std as T5's token embedding; `init_hypermodel` replaces them with
    # rows of the pretrained vocabulary so their scale matches what it expects.
    self.decoder_inputs = param_with_axes(self, 'decoder_inputs', _normal(1.0),
                                          (self.num_inputs, cfg.d_model),
                                          ('hyper_tokens', 'embed'))

  def encode(self, tokens: Array, deterministic: bool = True) -> tuple[Array, Array]:
    """Returns the encoded few-shot input [B, T, D] and its mask [B, T] (bool)."""
    return self.encoder(tokens, None, deterministic), tokens > 0

  def _inputs(self, batch: int) -> Array:
    z = self.decoder_inputs.astype(self.config.compute_dtype)
    return jnp.broadcast_to(z[None], (batch,) + z.shape)  # [B, N, D]

  def decode_parallel(self, encoded: Array, mask: Array,
                      deterministic: bool = True) -> Array:
    """All learned inputs at once, bidirectionally; returns [B, N, D]."""
    return self.decoder(None, encoded, mask[:, None, None, :], None, deterministic,
                        inputs_embeds=self._inputs(encoded.shape[0]))

  def decode_autoregressive(self, encoded: Array, mask: Array, num_steps: int,
                            deterministic: bool = True,
                            state_offsets: Array | None = None) -> Array:
    """HART: `num_steps` cached decoder steps of `num_inputs` states each.

    Step 1 reads the learned inputs z; step s > 1 reads step s-1's output
    states. The states of one step attend to each other and to all earlier
    steps (block-causal), through the decode-mode cache of `Decoder`.

    Args:
      encoded: [B, T, D] hypermodel encoder output.
      mask: [B, T] bool, True where `encoded` is attendable.
      num_steps: autoregressive steps S.
      deterministic: disables dropout.
      state_offsets: optional [B, S, N, D] added to each step's output before
        it is used (an intervention hook: causality tests, probing).

    Returns:
      [B, S, N, D] generated states, in generation (step) order.
    """
    cfg = self.config
    batch, width = encoded.shape[0], self.num_inputs
    if self.is_initializing():
      self.decode_parallel(encoded, mask, deterministic)  # creates the parameters
    params = nn.unbox(self.variables['params']['decoder'])
    # Same parameters, causal and cached. An unbound copy applied functionally
    # lets the cache live inside this one pure `apply` (no mutable collection).
    decoder = Decoder(cfg, embedder=None, causal=True, decode=True, parent=None)
    max_len = num_steps * width
    encoder_mask = mask[:, None, None, :]

    def run(cache, x, rng):
      variables = {'params': params} if cache is None else {'params': params, 'cache': cache}
      rngs = None if deterministic else {'dropout': rng}
      return decoder.apply(variables, None, encoded, encoder_mask, None, deterministic,
                           inputs_embeds=x, max_decode_length=max_len,
                           mutable=['cache'], rngs=rngs)

    full = jnp.zeros((batch, max_len, cfg.d_model), cfg.compute_dtype)
    cache_shapes = jax.eval_shape(lambda: run(None, full, jax.random.key(0))[1]['cache'])
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)

    # Per-step scan inputs; None leaves are empty pytrees for `lax.scan`.
    rngs = None if deterministic else jax.random.split(self.make_rng('dropout'), num_steps)
    offsets = None if state_offsets is None else jnp.moveaxis(
        state_offsets.astype(cfg.compute_dtype), 1, 0)  # [S, B, N, D]

    def step(carry, xs):
      x, cache = carry
      rng, offset = xs
      h, variables = run(cache, x, rng)
      if offset is not None:
        h = h + offset
      return (h, variables['cache']), h

    _, states = jax.lax.scan(step, (self._inputs(batch), cache), (rngs, offsets),
                             length=num_steps)
    return jnp.moveaxis(states, 0, 1)  # [B, S, N, D]


def copy_t5_weights(backbone_shapes: dict, t5_params: dict, backbone_config: T5Config,
                    t5_config: T5Config) -> dict:
  """T5's embedding, encoder and first N decoder layers, as backbone parameters.

  Handles both layer layouts (`layers_i` and scanned `layers/layer`), so
  `load_pretrained(..., scan_layers=...)` checkpoints of either kind work as
  long as the backbone uses the same layout.

  Args:
    backbone_shapes: the `Backbone`'s parameters or their shapes (e.g. from
      `jax.eval_shape`), used to check the copy.
    t5_params: `T5` parameters (e.g. from `load_pretrained`), boxed or not.
    backbone_config: the backbone's config (truncated decoder).
    t5_config: the config `t5_params` were built with.

  Returns:
    {'token_embedder', 'encoder', 'decoder'} subtrees of `t5_params` (not
    copied in memory); the learned `decoder_inputs` are left to the caller.
  """
  t5_params = nn.unbox(t5_params)
  keep = backbone_config.num_decoder_layers
  if keep > t5_config.num_decoder_layers:
    raise ValueError(f'decoder_layers={keep} but the T5 checkpoint has only '
                     f'{t5_config.num_decoder_layers} decoder layers')
  t5_scanned = 'layers' in t5_params['encoder']  # the layout the parameters really have
  if backbone_config.scan_layers != t5_scanned:
    raise ValueError(
        f'copy_t5_weights: the T5 parameters use the {"scanned" if t5_scanned else "per-layer"}'
        f' layer layout but the hypermodel has scan_layers={backbone_config.scan_layers}; '
        'load them with load_pretrained(..., scan_layers=...) to match')
  t5_dec = t5_params['decoder']
  decoder = {'relpos_bias': t5_dec['relpos_bias'], 'decoder_norm': t5_dec['decoder_norm']}
  if backbone_config.scan_layers:
    decoder['layers'] = jax.tree.map(lambda x: x[:keep], t5_dec['layers'])
  else:
    for i in range(keep):
      decoder[f'layers_{i}'] = t5_dec[f'layers_{i}']
  out = {'token_embedder': t5_params['token_embedder'], 'encoder': t5_params['encoder'],
         'decoder': decoder}
  want = {k: v for k, v in nn.unbox(backbone_shapes).items() if k != 'decoder_inputs'}
  _check_same_shapes(want, out)
  return out


def _check_same_shapes(want: dict, got: dict) -> None:
  flat = lambda tree: {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
                       jax.tree_util.tree_flatten_with_path(tree)[0]}
  want_flat, got_flat = flat(want), flat(got)
  if want_flat.keys() != got_flat.keys():
    missing = sorted(want_flat.keys() - got_flat.keys())[:5]
    extra = sorted(got_flat.keys() - want_flat.keys())[:5]
    raise ValueError(f'copy_t5_weights: parameter trees differ; missing {missing}, '
                     f'unexpected {extra}')
  for k, shape in want_flat.items():
    if got_flat[k] != shape:
      raise ValueError(f'copy_t5_weights: {k} has shape {got_flat[k]} in the T5 '
                       f'checkpoint but the hypermodel expects {shape}')
