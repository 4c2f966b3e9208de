"""Fused, chunked output layer + cross-entropy: [B, T, V] logits never exist at once.

`token_nll(hidden, kernel, targets)` equals

    -take_along_axis(log_softmax(hidden @ kernel), targets)      # [B, T], float32

but computes the logits chunk by chunk over target positions inside a
`lax.scan`, in both passes: the forward keeps only the per-token
log-normaliser (B·T floats), the backward recomputes each chunk's logits and
turns them straight into `softmax - onehot` for the two gradient matmuls. So
neither the forward activations nor the backward residuals hold anything
vocabulary-sized beyond one chunk, and on a CPU a chunk stays cache-resident
instead of streaming several [B, T, V] float32 arrays through memory.

Training (`loss_sums`) and rank-classification scoring (`target_loglik`) use it.
Sharding: the batch axis stays the leading axis of every chunk and each
chunk's logits carry the logical axes of the unfused logits
(`act_batch`, `act_len`, `act_vocab`), so a `tensor` mesh axis splits the
vocabulary and XLA reduces the log-normaliser across it.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

# float32 logits per chunk (rows x vocab): 2^22 = 16 MiB. On one CPU core
# fewer, larger chunks measured faster (the tiny preset's 8 x 16 x 32128
# logits: one chunk 0.68x the unfused step's time, four chunks 0.81x); at
# Large/XL this still bounds the vocabulary-sized arrays to a few chunks' worth.
CHUNK_ELEMENTS = 1 << 22
_LOGIT_AXES = ('act_batch', 'act_len', 'act_vocab')


def chunk_length(batch: int, length: int, vocab: int, elements: int = CHUNK_ELEMENTS) -> int:
  """Target positions per chunk: as many as fit `elements` logits, at least 1."""
  return max(1, min(length, elements // max(1, batch * vocab)))


def _logits(h: Array, kernel: Array, dtype) -> Array:
  """[B, C, D] x [D, V] -> [B, C, V] float32 (inputs cast to the compute dtype)."""
  out = jnp.einsum('BCD,DV->BCV', h.astype(dtype), kernel.astype(dtype),
                   preferred_element_type=jnp.float32)
  return nn.with_logical_constraint(out, _LOGIT_AXES)


def _is_target(logits: Array, targets: Array) -> Array:
  iota = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  return iota == targets[..., None]


def _to_chunks(x: Array, chunk: int) -> Array:
  """[B, T, ...] (T divisible by chunk) -> [T / chunk, B, chunk, ...]."""
  b, t = x.shape[:2]
  return jnp.moveaxis(x.reshape((b, t // chunk, chunk) + x.shape[2:]), 1, 0)


def _from_chunks(x: Array) -> Array:
  n, b, c = x.shape[:3]
  return jnp.moveaxis(x, 0, 1).reshape((b, n * c) + x.shape[3:])


@functools.lru_cache(maxsize=None)
def _fused(chunk: int, dtype_name: str):
  """The custom-VJP function for one chunk length and compute dtype."""
  dtype = jnp.dtype(dtype_name)

  def forward(h, kernel, targets):
    def body(_, xs):
      hc, tc = xs
      logits = _logits(hc, kernel, dtype)
      top = jax.lax.stop_gradient(jnp.max(logits, axis=-1))
      lse = top + jnp.log(jnp.sum(jnp.exp(logits - top[..., None]), axis=-1))
      target = jnp.sum(jnp.where(_is_target(logits, tc), logits, 0.0), axis=-1)
      return None, (lse - target, lse)
    _, (nll, lse) = jax.lax.scan(body, None, (_to_chunks(h, chunk), _to_chunks(targets, chunk)))
    return _from_chunks(nll), lse  # lse stays chunked: [T / chunk, B, chunk]

  @jax.custom_vjp
  def nll_fn(h, kernel, targets):
    return forward(h, kernel, targets)[0]

  def fwd(h, kernel, targets):
    # symbolic_zeros: `.perturbed` says whether the kernel is differentiated
    # at all (a frozen lm_head's [D, V] gradient is then never computed).
    nll, lse = forward(h.value, kernel.value, targets.value)
    wants = {'h': h.perturbed, 'kernel': kernel.perturbed}
    # Which cotangents to form travels in the residuals' (static) tree structure.
    flags = {k: () for k, v in wants.items() if v}
    return nll, (h.value, kernel.value, targets.value, lse, flags)

  def bwd(res, g):
    h, kernel, targets, lse, flags = res
    if isinstance(g, jax.custom_derivatives.SymbolicZero):
      return None, None, None
    want_h, want_k = 'h' in flags, 'kernel' in flags

    def body(dk, xs):
      hc, tc, lc, gc = xs
      logits = _logits(hc, kernel, dtype)
      probs = jnp.exp(logits - lc[..., None])
      dlogits = (probs - _is_target(logits, tc).astype(jnp.float32)) * gc[..., None]
      dlogits = nn.with_logical_constraint(dlogits, _LOGIT_AXES).astype(dtype)
      dh = jnp.einsum('BCV,DV->BCD', dlogits, kernel.astype(dtype),
                      preferred_element_type=jnp.float32).astype(h.dtype) if want_h else None
      if want_k:
        dk = dk + jnp.einsum('BCD,BCV->DV', hc.astype(dtype), dlogits,
                             preferred_element_type=jnp.float32)
        dk = nn.with_logical_constraint(dk, ('embed', 'vocab'))
      return dk, dh

    dk0 = jnp.zeros(kernel.shape, jnp.float32) if want_k else None
    dk, dh = jax.lax.scan(body, dk0, (_to_chunks(h, chunk), _to_chunks(targets, chunk), lse,
                                      _to_chunks(g.astype(jnp.float32), chunk)))
    return (_from_chunks(dh) if want_h else None,
            dk.astype(kernel.dtype) if want_k else None, None)

  nll_fn.defvjp(fwd, bwd, symbolic_zeros=True)
  return nll_fn


@functools.lru_cache(maxsize=None)
def _fused_sum(chunk: int, dtype_name: str):
  """sum(token NLL * weights) whose gradients are formed in the forward pass.

  The loss is a scalar, so its gradients are its upstream cotangent times
  fixed arrays: computing `softmax - onehot` while each chunk's logits are
  live (as Liger-Kernel's fused linear cross-entropy does) saves the
  backward's recomputation of the logits, one matmul and several
  vocabulary-sized passes. Residuals: dL/dhidden [B, T, D] and, only if the
  kernel is differentiated, dL/dkernel [D, V] (the size of the gradient itself).
  """
  dtype = jnp.dtype(dtype_name)

  def run(h, kernel, targets, weights, want_h=False, want_k=False, want_w=False):
    def body(carry, xs):
      total, dk = carry
      hc, tc, wc = xs
      logits = _logits(hc, kernel, dtype)
      top = jnp.max(logits, axis=-1, keepdims=True)
      e = jnp.exp(logits - top)
      norm = jnp.sum(e, axis=-1, keepdims=True)
      is_target = _is_target(logits, tc)
      nll = (top + jnp.log(norm))[..., 0] - jnp.sum(jnp.where(is_target, logits, 0.0), -1)
      total = total + jnp.sum(nll * wc)
      dh = None
      if want_h or want_k:
        dlogits = (e / norm - is_target.astype(jnp.float32)) * wc[..., None]
        dlogits = nn.with_logical_constraint(dlogits, _LOGIT_AXES).astype(dtype)
        if want_h:
          dh = jnp.einsum('BCV,DV->BCD', dlogits, kernel.astype(dtype),
                          preferred_element_type=jnp.float32).astype(h.dtype)
        if want_k:
          dk = dk + jnp.einsum('BCD,BCV->DV', hc.astype(dtype), dlogits,
                               preferred_element_type=jnp.float32)
          dk = nn.with_logical_constraint(dk, ('embed', 'vocab'))
      return (total, dk), (dh, nll if want_w else None)

    dk0 = jnp.zeros(kernel.shape, jnp.float32) if want_k else None
    xs = (_to_chunks(h, chunk), _to_chunks(targets, chunk), _to_chunks(weights, chunk))
    (total, dk), (dh, nll) = jax.lax.scan(body, (jnp.zeros((), jnp.float32), dk0), xs)
    return total, (_from_chunks(dh) if want_h else None,
                   dk.astype(kernel.dtype) if want_k else None,
                   _from_chunks(nll) if want_w else None)

  @jax.custom_vjp
  def sum_fn(h, kernel, targets, weights):
    return run(h, kernel, targets, weights)[0]

  def fwd(h, kernel, targets, weights):
    total, grads = run(h.value, kernel.value, targets.value, weights.value,
                       h.perturbed, kernel.perturbed, weights.perturbed)
    return total, grads

  def bwd(grads, g):
    if isinstance(g, jax.custom_derivatives.SymbolicZero):
      return None, None, None, None
    scale = lambda x: None if x is None else (g * x).astype(x.dtype)
    dh, dk, dw = grads
    return scale(dh), scale(dk), None, scale(dw)

  sum_fn.defvjp(fwd, bwd, symbolic_zeros=True)
  return sum_fn


def _prepare(hidden, targets, chunk, vocab, *more):
  """Chunk length, and inputs padded along T to a multiple of it (padding: target 0,
  weight 0, sliced off or weighted out)."""
  b, t, _ = hidden.shape
  chunk = chunk or chunk_length(b, t, vocab)
  pad = -t % chunk
  targets = targets.astype(jnp.int32)
  if pad:
    hidden = jnp.pad(hidden, [(0, 0), (0, pad), (0, 0)])
    targets = jnp.pad(targets, [(0, 0), (0, pad)])
    more = tuple(jnp.pad(m, [(0, 0), (0, pad)]) for m in more)
  return chunk, hidden, targets, more


def token_nll(hidden: Array, kernel: Array, targets: Array, *, dtype=None,
              chunk: int | None = None) -> Array:
  """Per-token negative log-likelihood of `targets` under `hidden @ kernel`.

  Args:
    hidden: [B, T, D] final decoder states (after the last norm and dropout).
    kernel: [D, V] the lm_head kernel.
    targets: [B, T] int token ids.
    dtype: compute dtype of the matmuls (default: `hidden`'s); the softmax is float32.
    chunk: target positions per chunk (default: `chunk_length`).

  Returns:
    [B, T] float32; differentiable in `hidden` and `kernel`.
  """
  t = hidden.shape[1]
  dtype = jnp.dtype(dtype or hidden.dtype)
  chunk, hidden, targets, _ = _prepare(hidden, targets, chunk, kernel.shape[-1])
  return _fused(chunk, dtype.name)(hidden, kernel, targets)[:, :t]


def loss_sums(hidden: Array, kernel: Array, targets: Array, weights: Array, *, dtype=None,
              chunk: int | None = None) -> tuple[Array, Array]:
  """(sum of weighted token NLL, sum of weights): `losses.cross_entropy` of `hidden @ kernel`.

  Differentiable in `hidden`, `kernel` and `weights`; the gradients are
  computed in the forward pass (see `_fused_sum`), so only call it for a loss.
  """
  weights = weights.astype(jnp.float32)
  dtype = jnp.dtype(dtype or hidden.dtype)
  chunk, hidden, targets, (padded_w,) = _prepare(hidden, targets, chunk, kernel.shape[-1],
                                                 weights)
  total = _fused_sum(chunk, dtype.name)(hidden, kernel, targets, padded_w)
  return total, jnp.sum(weights)


def target_loglik(hidden: Array, kernel: Array, targets: Array, weights: Array, **kw) -> Array:
  """[B] summed log-likelihood of each row's weighted targets (rank classification)."""
  return -jnp.sum(token_nll(hidden, kernel, targets, **kw) * weights.astype(jnp.float32),
                  axis=-1)


def lm_head_kernel(t5_params: dict) -> Array:
  """The [D, V] output kernel inside a T5 parameter tree."""
  return t5_params['lm_head']['kernel']
