"""Walking jaxprs in tests: what a traced program computes, sub-jaxprs included."""

import jax
import jax.extend


def eqns(jaxpr):
  """Every equation of `jaxpr` and of its sub-jaxprs (scan, pjit, remat, cond branches)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from eqns(sub)


def dot_shapes(jaxpr) -> set:
  """Output shapes of every dot_general in `jaxpr`."""
  return {tuple(v.aval.shape) for e in eqns(jaxpr) if e.primitive.name == 'dot_general'
          for v in e.outvars}
