"""Parameter-generation heads: hidden states -> PEFT tensors.

Every kernel is float32 with logical axis names; matmuls run in the compute
dtype. Einsum letters: B batch, N states, L layers, P prefix length,
D d_model, E head hidden width, F inner (= heads * d_kv), R LoRA rank.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperflax.model.layers import param_with_axes

Array = jax.Array

_zeros = nn.initializers.zeros


def _fan_in(fan_in: int, scale: float = 1.0):
  """Normal with variance scale / fan_in (LeCun), fan_in given explicitly
  because these kernels have several output (or per-layer) axes."""
  return nn.initializers.normal(stddev=(scale / fan_in) ** 0.5)


class LayerNorm(nn.Module):
  """Standard LayerNorm (mean and variance, scale and bias), in float32.

  The paper's heads use `nn.LayerNorm`, not T5's RMS norm.
  """
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    scale = param_with_axes(self, 'scale', nn.initializers.ones, (d,), ('embed',))
    bias = param_with_axes(self, 'bias', _zeros, (d,), ('embed',))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    return (y * scale + bias).astype(x.dtype)


class Hidden(nn.Module):
  """Optional LayerNorm, then Linear(D -> E) and tanh: the heads' first half.

  Attributes:
    hidden: width E.
    dtype: compute dtype.
    layer_norm: normalise the input first (HyperT5 heads do; the prefix
      tuning reparameterisation MLP does not).
  """
  hidden: int
  dtype: jnp.dtype = jnp.float32
  layer_norm: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.layer_norm:
      x = LayerNorm(name='layer_norm')(x)
    kernel = param_with_axes(self, 'kernel', _fan_in(x.shape[-1]), (x.shape[-1], self.hidden),
                             ('embed', 'mlp'))
    bias = param_with_axes(self, 'bias', _zeros, (self.hidden,), ('mlp',))
    h = jnp.einsum('...D,DE->...E', x.astype(self.dtype), kernel.astype(self.dtype))
    return jnp.tanh(h + bias.astype(self.dtype))  # [..., E]


def _project(module: nn.Module, name: str, h: Array, out_shape: tuple[int, ...],
             axes: tuple, dtype, scale: float = 1.0) -> Array:
  """Linear(E -> prod(out_shape)) with a kernel shaped [E, *out_shape]."""
  kernel = param_with_axes(module, f'{name}_kernel', _fan_in(h.shape[-1], scale),
                           (h.shape[-1],) + tuple(out_shape), axes)
  bias = param_with_axes(module, f'{name}_bias', _zeros, tuple(out_shape), axes[1:])
  y = jnp.tensordot(h.astype(dtype), kernel.astype(dtype), axes=1)
  return y + bias.astype(dtype)  # [..., *out_shape]


class PrefixHead(nn.Module):
  """HyperT5-Prefix head (Fig. 7): LayerNorm -> Linear(E) -> tanh -> Linear(L*F).

  Attributes:
    num_layers: downstream layers L it writes.
    inner_dim: F, the width of one layer's keys/values.
    hidden: E.
    dtype: compute dtype.
    layer_norm: see `Hidden`.
  """
  num_layers: int
  inner_dim: int
  hidden: int
  dtype: jnp.dtype = jnp.float32
  layer_norm: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = Hidden(self.hidden, self.dtype, self.layer_norm, name='hidden')(x)  # [B, P, E]
    y = _project(self, 'out', h, (self.num_layers, self.inner_dim),
                 ('embed', 'layers', 'joined_kv'), self.dtype)  # [B, P, L, F]
    return jnp.swapaxes(y, 1, 2)  # [B, L, P, F]


class PrefixMLP(nn.Module):
  """Prefix-tuning reparameterisation (Li & Liang 2021, §4.3), as heads.

  Embeddings [B, 2P, D] -> per stack (encoder: first P, decoder: last P)
  Linear(E) -> tanh -> Linear(L*F) for keys and for values. `SharedPrefix`
  (T5-MTF) feeds it learned embeddings; HyperT5-Prefix-MLP feeds it generated
  ones, so its trained heads can be reused to tune from generated embeddings
  (HyperTuning App. D, "Prefix-MLP (Hyper)").

  Attributes:
    num_encoder_layers: downstream encoder layers.
    num_decoder_layers: downstream decoder layers.
    inner_dim: F.
    hidden: E.
    dtype: compute dtype.
  """
  num_encoder_layers: int
  num_decoder_layers: int
  inner_dim: int
  hidden: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, embeddings: Array) -> dict:
    prefix_len = embeddings.shape[1] // 2
    out = {}
    for stack, layers, x in (('encoder', self.num_encoder_layers, embeddings[:, :prefix_len]),
                             ('decoder', self.num_decoder_layers, embeddings[:, prefix_len:])):
      # One hidden layer per stack feeds both keys and values: the same
      # function as a single Linear(E -> L*2*F) (peft's PrefixEncoder).
      h = Hidden(self.hidden, self.dtype, layer_norm=False, name=f'{stack}_hidden')(x)
      kv = {}
      for name in ('k', 'v'):
        y = _project(self, f'{stack}_{name}', h, (layers, self.inner_dim),
                     ('embed', 'layers', 'joined_kv'), self.dtype)  # [B, P, L, F]
        kv[name] = jnp.swapaxes(y, 1, 2)  # [B, L, P, F]
      out[stack] = {'self': {'prefix': kv}}
    return out


class LoraHead(nn.Module):
  """HyperT5-LoRA head (Fig. 8): per layer state -> down map a and up map b.

  LayerNorm -> Linear(E) -> tanh -> Linear(R*D + R*F), shared across layers
  (the layer is carried by which decoder state is read).

  Attributes:
    d_model: D (rows of a).
    inner_dim: F (columns of b).
    rank: R.
    hidden: E.
    dtype: compute dtype.
  """
  d_model: int
  inner_dim: int
  rank: int
  hidden: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    h = Hidden(self.hidden, self.dtype, name='hidden')(x)  # [B, L, E]
    # Scaled so that x·a·b starts near the size of x (a ~ D^-1/2, b ~ R^-1/2),
    # like a standard LoRA init; the gates decide how much of it is used.
    a = _project(self, 'a', h, (self.d_model, self.rank), ('mlp', 'embed', 'lora_rank'),
                 self.dtype, scale=1.0 / self.d_model)  # [B, L, D, R]
    b = _project(self, 'b', h, (self.rank, self.inner_dim),
                 ('embed', 'lora_rank', 'joined_kv'), self.dtype,
                 scale=1.0 / self.rank)  # [B, L, R, F]
    return a, b


class HartPrefixHead(nn.Module):
  """HART's per-layer prefix MLPs for one of enc-key/enc-value/dec-key/dec-value.

  LayerNorm -> Linear(D -> P*E) shared by all layers -> reshape [P, E] ->
  tanh -> per-layer Linear(E -> F) (HART App. 8.1.2; the paper's second
  projection is d -> d, here d -> inner_dim so that inner != d_model works).

  Attributes:
    num_layers: downstream layers L (one state per layer).
    prefix_len: P.
    inner_dim: F.
    hidden: E.
    dtype: compute dtype.
  """
  num_layers: int
  prefix_len: int
  inner_dim: int
  hidden: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, states: Array) -> Array:
    """states: [B, L, D], row l for downstream layer l. Returns [B, L, P, F]."""
    dt = self.dtype
    x = LayerNorm(name='layer_norm')(states).astype(dt)
    k1 = param_with_axes(self, 'shared_kernel', _fan_in(x.shape[-1]),
                         (x.shape[-1], self.prefix_len, self.hidden),
                         ('embed', 'prefix_len', 'mlp'))
    b1 = param_with_axes(self, 'shared_bias', _zeros, (self.prefix_len, self.hidden),
                         ('prefix_len', 'mlp'))
    h = jnp.tanh(jnp.einsum('BLD,DPE->BLPE', x, k1.astype(dt)) + b1.astype(dt))
    k2 = param_with_axes(self, 'layer_kernel', _fan_in(self.hidden),
                         (self.num_layers, self.hidden, self.inner_dim),
                         ('layers', 'embed', 'joined_kv'))
    b2 = param_with_axes(self, 'layer_bias', _zeros, (self.num_layers, self.inner_dim),
                         ('layers', 'joined_kv'))
    y = jnp.einsum('BLPE,LEF->BLPF', h, k2.astype(dt))
    return y + b2.astype(dt)[None, :, None, :]  # [B, L, P, F]
