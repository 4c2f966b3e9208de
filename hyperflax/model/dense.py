"""`dense(x, kernel)`: x · kernel over x's last axis, with a weight gradient XLA:CPU runs fast.

The kernel's gradient is xᵀ · dy, a contraction over every token. Autodiff
writes it as a dot whose left operand contracts its leading (token) axis;
XLA:CPU's YNNPACK GEMMs need a row-major left operand contracting its last
axis, so that dot falls back to XLA's generic one, which ran at 59–71 % of the
YNNPACK rate on T5 v1.1 small's shapes (bench/RESULTS.md, session 12). When
lowered for the CPU, the backward here materialises xᵀ ([D, tokens], one copy
of an activation) behind an optimisation barrier, which keeps XLA from folding
the transpose back into the dot. GPU and TPU GEMMs take transposed operands
for free, so lowered for them the backward is autodiff's own contraction.
Under a mesh the reshape merges the token axes: fine when only the batch axis
is sharded (`act_len` is unsharded by default, `sharding.py`); a sharded length
axis would add an all-gather of x on the CPU path.

A kernel that is not differentiated (the frozen T5 under hypertuning) never
gets its gradient formed, and x is then not kept for the backward
(`symbolic_zeros`), as with a plain einsum. Forward-mode autodiff (`jax.jvp`)
is not defined for it (a custom VJP); nothing here uses it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array


def _apply(x: Array, kernel: Array) -> Array:
  """[..., D] · [D, *F] -> [..., *F]."""
  return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def _kernel_grad_cpu(x: Array, g: Array) -> Array:
  """[D, *F] = xᵀ · g with xᵀ materialised row-major (YNNPACK's layout)."""
  f_shape = g.shape[x.ndim - 1:]
  xt = jax.lax.optimization_barrier(x.reshape(-1, x.shape[-1]).T)  # [D, tokens]
  return jnp.dot(xt, g.reshape(xt.shape[1], math.prod(f_shape))).reshape(x.shape[-1:] + f_shape)


def _kernel_grad(x: Array, g: Array) -> Array:
  """[D, *F]: autodiff's contraction over the token axes."""
  tokens = tuple(range(x.ndim - 1))
  return jax.lax.dot_general(x, g, ((tokens, tokens), ((), ())))


@jax.custom_vjp
def _dense(x: Array, kernel: Array) -> Array:
  return _apply(x, kernel)


def _fwd(x, kernel):
  # Residuals: x only if the kernel's gradient is wanted; which cotangents to
  # form travels in their (static) tree structure.
  wants = {k: () for k, p in (('x', x.perturbed), ('kernel', kernel.perturbed)) if p}
  saved_x = x.value if kernel.perturbed else None
  return _apply(x.value, kernel.value), (saved_x, kernel.value, wants)


def _bwd(res, g):
  x, kernel, wants = res
  if isinstance(g, jax.custom_derivatives.SymbolicZero):
    return None, None
  dx = dk = None
  if 'x' in wants:  # g: [..., *F] contracted with kernel [D, *F] over F
    f_axes = tuple(range(g.ndim - kernel.ndim + 1, g.ndim))
    dx = jax.lax.dot_general(g, kernel, ((f_axes, tuple(range(1, kernel.ndim))), ((), ())))
  if 'kernel' in wants:
    # Resolved when lowered: a single-platform program holds only its own branch.
    dk = jax.lax.platform_dependent(x, g, cpu=_kernel_grad_cpu, default=_kernel_grad)
  return dx, dk


_dense.defvjp(_fwd, _bwd, symbolic_zeros=True)


def dense(x: Array, kernel: Array) -> Array:
  """[..., D] · [D, *F] -> [..., *F], as `jnp.einsum` (inputs promoted to a common dtype)."""
  if x.shape[-1] != kernel.shape[0]:
    raise ValueError(f'dense: x {x.shape} and kernel {kernel.shape} do not contract')
  dtype = jnp.result_type(x, kernel)
  return _dense(x.astype(dtype), kernel.astype(dtype))
