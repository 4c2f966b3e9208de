"""`dense(x, kernel)`: x · kernel over x's last axis, with a weight gradient XLA:CPU runs fast.

The kernel's gradient is xᵀ · dy, a contraction over every token. Autodiff
writes it as a dot whose left operand contracts its leading (token) axis;
XLA:CPU's YNNPACK GEMMs take only row-major, last-axis-contracting operands, so
that dot falls back to XLA's generic one, which runs at 65–75 % of the
YNNPACK rate on T5 v1.1 small's shapes (bench/RESULTS.md, session 12). Here the
backward materialises xᵀ itself ([D, tokens], one copy of an activation) behind
an optimisation barrier, which keeps XLA from folding the transpose back into
the dot. Only when tracing for the CPU: GPU and TPU GEMMs take transposed
operands at no cost, and there the copy would be one more activation pass.

A kernel that is not differentiated (the frozen T5 under hypertuning) never
gets its gradient formed (`symbolic_zeros`), as with a plain einsum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _apply(x: Array, kernel: Array) -> Array:
  return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


@jax.custom_vjp
def _dense(x: Array, kernel: Array) -> Array:
  return _apply(x, kernel)


def _fwd(x, kernel):
  # Which cotangents to form travels in the residuals' (static) tree structure.
  wants = {k: () for k, p in (('x', x.perturbed), ('kernel', kernel.perturbed)) if p}
  return _apply(x.value, kernel.value), (x.value, kernel.value, wants)


def _bwd(res, g):
  x, kernel, wants = res
  if isinstance(g, jax.custom_derivatives.SymbolicZero):
    return None, None
  dx = dk = None
  out_axes = tuple(range(x.ndim - 1, g.ndim))  # g: [..., *kernel.shape[1:]]
  if 'x' in wants:
    dx = jax.lax.dot_general(g, kernel, ((out_axes, tuple(range(1, kernel.ndim))), ((), ())))
  if 'kernel' in wants:
    tokens = tuple(range(x.ndim - 1))
    if jax.default_backend() == 'cpu':
      xt = jax.lax.optimization_barrier(x.reshape(-1, x.shape[-1]).T)  # [D, tokens]
      dk = jnp.dot(xt, g.reshape(xt.shape[1], -1)).reshape(kernel.shape)
    else:  # what autodiff of the einsum writes
      dk = jax.lax.dot_general(x, g, ((tokens, tokens), ((), ())))
  return dx, dk


_dense.defvjp(_fwd, _bwd, symbolic_zeros=True)


def dense(x: Array, kernel: Array) -> Array:
  """[..., D] · [D, *F] -> [..., *F], as `jnp.einsum` (inputs promoted to a common dtype)."""
  dtype = jnp.result_type(x, kernel)
  if x.shape[-1] != kernel.shape[0]:
    raise ValueError(f'dense: x {x.shape} and kernel {kernel.shape} do not contract')
  return _dense(x.astype(dtype), kernel.astype(dtype))
