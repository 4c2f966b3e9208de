r"""Hypertune a task: few-shot examples -> one hypermodel forward pass -> an adapter.

  python -m hyperflax.hypertune --checkpoint WORKDIR --examples few_shot.jsonl \
      [--definition TEXT] --out ADAPTER_DIR [--export-downstream HF_DIR] \
      [--export-peft PEFT_DIR] [--hyper-init INIT_WORKDIR]
  python -m hyperflax.hypertune --adapter ADAPTER_DIR --export-peft PEFT_DIR

`--checkpoint` is a training workdir (`config.json` + `checkpoints/`); the
JSONL has one `{"input": ..., "output": ...}` (or "target") object per line.
The demonstrations are formatted exactly as in training (the config's
dataset tokenizer, `data.lengths`, `<x> input <y> output` segments, whole
demonstrations dropped to fit) and are not stored: the adapter directory holds
only the generated parameters and a manifest (see `hyperflax.adapters`).

  --export-downstream  writes the downstream T5 this adapter fits as a
                       transformers directory (HyperT5+ checkpoints, whose T5 was
                       trained, and random-init tiny runs have no other copy);
  --export-peft        writes a LoRA adapter in Hugging Face PEFT's layout;
  --hyper-init         writes a workdir whose checkpoint initialises single-task
                       PEFT tuning (HyperTuning §6): train it with
                       `--config.hyper.kind=shared_lora|shared_prefix
                       --config.hyper.init_from=INIT_WORKDIR`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import logging
import os
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hyperflax import adapters as adapters_lib
from hyperflax.data.examples import Example, Lengths
from hyperflax.data.io_utils import iter_jsonl
from hyperflax.model import peft as peft_lib

log = logging.getLogger('hyperflax.hypertune')


def read_examples(path: str) -> list[Example]:
  """Demonstrations from JSONL lines `{"input": str, "output"|"target": str}`."""
  out = []
  for number, row in iter_jsonl(path):
    where = f'{path}:{number}'
    target = row.get('output', row.get('target'))
    if not isinstance(row.get('input'), str) or not isinstance(target, str):
      raise ValueError(f'{where}: needs string fields "input" and "output" (or "target"); '
                       f'got keys {sorted(row)}')
    out.append(Example(row['input'], target, origin=where))
  return out


def tokenizer_info(tokenizer) -> dict[str, Any]:
  """How predict re-creates the tokenizer (kind, path, file hash)."""
  from hyperflax.workdir import tokenizer_info as info
  return info(tokenizer)


@functools.lru_cache(maxsize=16)
def _compiled_generator(hyper_config, t5_config):
  """One jitted generator per architecture: reloading a checkpoint stays warm."""
  from hyperflax.hyper import build_hypermodel
  module = build_hypermodel(hyper_config, t5_config)
  return jax.jit(lambda params, tokens: module.apply({'params': params}, tokens,
                                                     deterministic=True))


@dataclasses.dataclass
class Hypermodel:
  """A trained generator, loaded once; its forward pass is compiled once.

  Attributes:
    checkpoint: absolute path of the training workdir.
    step: the checkpoint step read.
    config: the training ConfigDict.
    exp: the `Experiment` built from it.
    hyper_params: generator parameters (device arrays).
    converter: few-shot formatter built as in training ('hyper' mode).
    downstream_source: where the downstream T5 comes from.
  """
  checkpoint: str
  step: int
  config: Any
  exp: Any
  hyper_params: Any
  converter: Any
  downstream_source: str
  _trained_downstream: Any = None
  _downstream: Any = None
  _sha256: str | None = None

  def __post_init__(self):
    self._generate = _compiled_generator(self.exp.hyper_config, self.exp.hyper_t5_config)

  @property
  def t5_config(self):
    return self.exp.t5_config.replace(scan_layers=False, remat=False)

  def downstream_params(self):
    """The (unscanned, float32 numpy) downstream parameters the adapters fit."""
    if self._downstream is None:
      from hyperflax.model import hf
      if self._trained_downstream is not None:
        params = self._trained_downstream
      else:  # the same draw as train(): PRNGKey(seed) -> init_rng -> down_rng
        init_rng = jax.random.split(jax.random.PRNGKey(self.config.seed))[0]
        params = self.exp.load_downstream(jax.random.split(init_rng)[0])
      if 'layers' in params['encoder']:
        params = hf.unstack_layers(params, self.exp.t5_config)
      self._downstream = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    return self._downstream

  def downstream_sha256(self) -> str:
    if self._sha256 is None:
      init_from = self.config.model.get('init_from', '')
      if self._trained_downstream is None and init_from:
        self._sha256 = adapters_lib.model_dir_sha256(init_from, self.downstream_params)
      else:
        self._sha256 = adapters_lib.params_sha256(self.downstream_params())
    return self._sha256


def query_format(converter) -> dict:
  """The manifest's 'query' entry where the downstream reads the query in its decoder
  (absent: in the encoder, as every adapter before it); serving scores alike."""
  if not converter.query_in_decoder:
    return {}
  return {'query': {'in_decoder': True, 'marks': converter.query_marks}}


def load_hypermodel(checkpoint: str) -> Hypermodel:
  """Reads a training workdir: config.json, the newest checkpoint, the tokenizer."""
  from hyperflax.data import registry
  from hyperflax.training.experiment import Experiment
  from hyperflax.workdir import as_path, load_run_config, load_trainable
  checkpoint = os.fspath(as_path(checkpoint))
  config = load_run_config(checkpoint, 'hypermodel')  # tokenizer pinned to the run's
  d = config.data
  options = dict(d.get('options', {}) or {})
  exp = Experiment.from_config(config)
  step, trainable = load_trainable(checkpoint, with_step=True)
  # The tokenizer the training data used (the synthetic suite has its own).
  _, ctx = registry._context(d.name, config.seed, d.num_shots, d.get('data_dir') or None,  # pylint: disable=protected-access
                             d.get('vocab_path') or None, options)
  lengths = (Lengths.make(tuple(d.lengths)) if d.get('lengths')
             else registry.REGISTRY[d.name].lengths)
  from hyperflax.data.converters import Converter
  init_from = config.model.get('init_from', '')
  if 'downstream' in trainable:
    source = f'{checkpoint} (downstream trained with the hypermodel, step {step})'
  else:
    source = os.fspath(as_path(init_from)) if init_from else f'random init (seed {config.seed})'
  return Hypermodel(checkpoint, step, config, exp,
                    jax.tree.map(jnp.asarray, trainable['hyper']),
                    Converter(ctx.tokenizer, lengths, 'hyper',
                              query_in_decoder=bool(options.get('query_in_decoder')),
                              query_marks=options.get('query_marks', 'xy')), source,
                    _trained_downstream=trainable.get('downstream'))


def hypertune(model: Hypermodel | str, examples: Sequence[Example] | str,
              definition: str | None = None, max_demos: int | None = None
              ) -> adapters_lib.Adapter:
  """Runs the hypermodel once on a task's demonstrations.

  Args:
    model: a `Hypermodel` or a training workdir.
    examples: demonstrations (or a JSONL path).
    definition: optional task instruction (an extra `<x>` segment, as S-NI).
    max_demos: use at most this many (default: the config's data.num_shots).

  Returns:
    The adapter (see `hyperflax.adapters`); save it with `save_adapter`.
  """
  from hyperflax.data.fewshot import Episode
  hm = load_hypermodel(model) if isinstance(model, str) else model
  examples = read_examples(examples) if isinstance(examples, str) else list(examples)
  limit = int(hm.config.data.num_shots if max_demos is None else max_demos)
  demos, beyond = examples[:limit], max(0, len(examples) - limit)
  lengths = hm.converter.lengths
  if hm.exp.hyper_config.uses_backbone:
    if not demos and not definition:
      raise ValueError('hypertune needs at least one demonstration or a definition')
    episode = Episode('hypertune', Example('', ''), tuple(demos), definition)
    ids, used, dropped = hm.converter.hyper_ids(episode)
    tokens = np.zeros((1, lengths.hyper), np.int32)
    tokens[0, :len(ids)] = ids
  else:  # shared baselines ignore their input
    tokens, used, dropped = np.ones((1, 1), np.int32), 0, len(demos)
  log.info('hypertune: %d demonstrations used, %d dropped to fit %d tokens, %d beyond '
           'num_shots=%d', used, dropped, lengths.hyper, beyond, limit)
  peft, aux = hm._generate(hm.hyper_params, jnp.asarray(tokens))  # pylint: disable=protected-access
  hyper = hm.exp.hyper_config
  manifest = {
      'kind': hyper.kind,
      'lora_rank': hyper.lora_rank if hyper.uses_lora else None,
      'prefix_len': hyper.prefix_len if hyper.uses_prefix else None,
      'generated_dtype': hyper.dtype,
      'downstream': adapters_lib.downstream_identity(hm.t5_config, hm.downstream_sha256(),
                                                     hm.downstream_source),
      'hypermodel': {'checkpoint': hm.checkpoint, 'step': hm.step, 'method': hm.config.method,
                     'kind': hyper.kind,
                     'train_downstream': bool(hm.config.get('train_downstream', False))},
      'demonstrations': {'given': len(examples), 'used': int(used),
                         'dropped_to_fit': int(dropped), 'beyond_num_shots': beyond,
                         'definition': bool(definition), 'stored': False},
      'tokenizer': tokenizer_info(hm.converter.tokenizer),
      'lengths': dataclasses.asdict(lengths),
      **query_format(hm.converter),
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }
  # Fusion states are stored as every decoder layer's cross-attention keys/values
  # (float32, like every adapter tensor): queries then skip their projection.
  downstream = ((hm.t5_config.replace(dtype='float32'), hm.downstream_params())
                if aux.get('fusion_states') is not None else None)
  return adapters_lib.from_generated(peft, aux, manifest, downstream)


def export_downstream(hm: Hypermodel, out_dir: str) -> str:
  """Writes the downstream T5 the adapters fit as a transformers directory."""
  from hyperflax.model import hf
  hf.params_to_hf(hm.downstream_params(), hm.t5_config, out_dir)
  return out_dir


# ---- hyper-init (HyperTuning §6) -------------------------------------------------

def hyper_init_params(adapter: adapters_lib.Adapter) -> tuple[str, dict]:
  """(shared kind, its parameters) that start PEFT tuning from `adapter`.

  LoRA -> `shared_lora` (gate folded into b). HyperT5-Prefix-MLP ->
  `shared_prefix`: the generated embeddings plus the hypermodel's Prefix-MLP
  (read from the checkpoint named in the manifest). Plain prefixes have no
  reparameterisation to start from and are refused.
  """
  from hyperflax.hyper.lora import LORA_SITES, PROJECTIONS
  slots = adapter.slots()
  if adapter.peft_type == 'lora' and not adapter.has_fusion:
    params = {}
    for stack, site in LORA_SITES:
      for proj in PROJECTIONS:
        key, name = f'{stack}/{site}/{proj}', f'{stack[:3]}_{site}_{proj}'
        if f'{key}/a' not in slots:
          raise ValueError(f'hyper-init: adapter has no {key} factors; shared_lora needs all '
                           f'of {LORA_SITES} x {PROJECTIONS}')
        params[f'{name}_a'] = slots[f'{key}/a']
        params[f'{name}_b'] = peft_lib.gated_b(slots[f'{key}/b'], slots.get(f'{key}/gate'))
    return 'shared_lora', params
  if adapter.kind == 'prefix_mlp' and 'init/embeddings' in adapter.tensors:
    from hyperflax.hyper.shared import shared_prefix_from_hypermodel
    from hyperflax.workdir import load_trainable
    hyper = load_trainable(adapter.manifest['hypermodel']['checkpoint'])['hyper']
    params = shared_prefix_from_hypermodel(hyper, adapter.tensors['init/embeddings'])
    return 'shared_prefix', jax.tree.map(np.asarray, params)
  raise ValueError(f'hyper-init: a {adapter.kind!r} adapter cannot initialise a tunable PEFT '
                   'here (supported: LoRA kinds -> shared_lora, prefix_mlp -> shared_prefix)')


def write_hyper_init(adapter: adapters_lib.Adapter, workdir: str) -> str:
  """Writes `workdir/checkpoints` for `--config.hyper.init_from=workdir`."""
  from hyperflax.training.checkpointing import Checkpointer
  from hyperflax.workdir import as_path
  kind, params = hyper_init_params(adapter)
  ckpt = Checkpointer(as_path(workdir) / 'checkpoints', keep=1, async_save=False)
  ckpt.save(0, {'step': np.zeros((), np.int32), 'trainable': {'hyper': params}},
            {'step': 0, 'method': 'hypermodel', 'hyper_kind': kind,
             'hyper_init_from_adapter': adapter.manifest})
  ckpt.close()
  log.info('wrote %s: train with --config.hyper.kind=%s --config.hyper.init_from=%s',
           workdir, kind, workdir)
  return kind


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m hyperflax.hypertune', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--checkpoint', help='training workdir of a hypermodel')
  parser.add_argument('--examples', help='few-shot JSONL ({"input", "output"} per line)')
  parser.add_argument('--definition', default=None, help='task instruction (optional)')
  parser.add_argument('--max-demos', type=int, default=None,
                      help='use at most N demonstrations (default: config data.num_shots)')
  parser.add_argument('--out', help='adapter directory to write')
  parser.add_argument('--adapter', help='an existing adapter directory (instead of generating)')
  parser.add_argument('--export-downstream', help='write the downstream T5 (transformers dir)')
  parser.add_argument('--export-peft', help='write the LoRA adapter in PEFT layout')
  parser.add_argument('--hyper-init', help='write a workdir that initialises PEFT tuning')
  parser.add_argument('--verbose', '--debug', action='store_true',
                      help='tracebacks and library INFO logs')
  args = parser.parse_args(argv)
  from hyperflax import cli
  cli.setup_logging(args.verbose or cli.verbose_requested([]), logging.WARNING)
  logging.getLogger('hyperflax').setLevel(logging.INFO)  # ours, not orbax's chatter
  from hyperflax import runtime
  runtime.log_runtime()  # one adapter is inference, which a CPU can do: nothing refused
  return cli.guard(lambda: _run(parser, args), args.verbose or cli.verbose_requested([]),
                   'hyperflax.hypertune')


def _run(parser, args) -> int:
  if args.adapter:
    if args.export_downstream:
      parser.error('--export-downstream needs --checkpoint (the adapter does not hold a T5)')
    adapter = adapters_lib.load_adapter(args.adapter)
  else:
    if not (args.checkpoint and args.examples and args.out):
      parser.error('--checkpoint, --examples and --out are required (or give --adapter)')
    hm = load_hypermodel(args.checkpoint)
    if args.export_peft and hm.converter.query_in_decoder:
      raise ValueError(f'{args.checkpoint}: its downstream reads the query in its decoder '
                       '(query_in_decoder); a PEFT model reads it in the encoder: drop '
                       '--export-peft and serve the adapter with hyperflax.predict')
    adapter = hypertune(hm, args.examples, args.definition, args.max_demos)
    adapters_lib.save_adapter(adapter, args.out)
    demos = adapter.manifest['demonstrations']
    print(f'wrote {args.out} ({adapter.kind}; {demos["used"]} demonstrations used, '
          f'{demos["dropped_to_fit"] + demos["beyond_num_shots"]} dropped)')
    if args.export_downstream:
      print(f'wrote {export_downstream(hm, args.export_downstream)} (transformers T5)')
  if args.export_peft:
    adapters_lib.export_peft(adapter, args.export_peft)
    print(f'wrote {args.export_peft} (PEFT LoRA)')
  if args.hyper_init:
    print(f'wrote {args.hyper_init} ({write_hyper_init(adapter, args.hyper_init)} init)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
