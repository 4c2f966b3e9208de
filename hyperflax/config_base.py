"""The defaults every `configs/*.py` file starts from (plain data, one comment per field)."""

from __future__ import annotations

import logging

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # 'hypermodel' | 't5_mtf' (query only) | 't5_mtf_fewshot' (demos + query concatenated).
  c.method = 'hypermodel'
  # HyperT5+: also train the downstream T5 (normally frozen).
  c.train_downstream = False

  c.model = ml_collections.ConfigDict()
  c.model.preset = 'large'          # T5 v1.1 size when init_from is empty
  c.model.init_from = ''            # transformers dir or `hyperflax.convert` output
  # An empty init_from means a randomly initialised frozen T5: a full-size run
  # refuses that (`hyperflax.runtime.preflight`) unless this says it is meant.
  c.model.allow_random_init = False
  c.model.dtype = 'bfloat16'        # compute dtype; parameters stay float32
  c.model.scan_layers = False       # nn.scan over layers (faster compiles at depth)
  c.model.remat = False             # rematerialise layers in the backward pass
  c.model.dropout_rate = 0.1
  c.model.overrides = ml_collections.ConfigDict()  # extra T5Config fields for presets

  c.hyper = ml_collections.ConfigDict()
  c.hyper.kind = 'prefix'           # prefix | prefix_mlp | lora | hart | shared_prefix | shared_lora
  c.hyper.prefix_len = 32
  c.hyper.lora_rank = 8
  c.hyper.decoder_layers = ml_collections.FieldReference(None, field_type=int)  # None: all
  c.hyper.head_hidden = ml_collections.FieldReference(None, field_type=int)     # None: d_model
  c.hyper.generation_order = 'bottom_up'  # HART: bottom_up | top_down | random
  c.hyper.order_seed = 0
  c.hyper.consistency_alpha = 0.0   # HART local consistency weight (paper: 1, 10, 20)
  c.hyper.fusion_in_decoder = False
  c.hyper.dtype = 'bfloat16'
  c.hyper.init_from = ''            # a training workdir (e.g. hyperpretraining) to start from
  # Hyperpretraining (CACLM, HyperTuning §4.2) precedes multi-task fine-tuning
  # for the hypermodels the paper hyperpretrains; §5.5 shows them failing
  # without it. Such configs name their CACLM config here, and training then
  # refuses to start (`check_hyperpretraining`) unless `init_from` is that
  # CACLM run's workdir or `skip_hyperpretraining=True` says the omission is
  # deliberate (§5.5's ablation, HART's "- pre-training" rows). '' = the paper
  # does not hyperpretrain this model (baselines, HART).
  c.hyper.hyperpretrain_config = ''  # e.g. 'caclm_prefix_large' (a configs/ name)
  c.hyper.skip_hyperpretraining = False
  c.hyper.init_backbone = True      # copy the downstream T5 weights into the backbone
  # Copy the backbone from this T5 checkpoint instead (a transformers dir or
  # `hyperflax.convert` output of the frozen model's width): HART-FLAN-T5.
  c.hyper.backbone_from = ''

  c.data = ml_collections.ConfigDict()
  c.data.name = 'p3_t0_train'       # a name from `hyperflax.data.names()`
  c.data.data_dir = ''              # root of the data layout ('' = $HYPERFLAX_DATA_DIR or ../shared/data)
  # spiece.model ('' = <data_dir>/t5/spiece.model); the synthetic suite also takes 'words'
  # (its word-level vocabulary) and 'words_compact' (the same words in 5,229 ids: set
  # model.overrides.vocab_size to at least that, e.g. 5248)
  c.data.vocab_path = ''
  c.data.batch_size = 256
  c.data.num_shots = 16
  c.data.lengths = (1024, 384, 128)  # hypermodel input, downstream input, target
  # What the downstream reads: '' = the method's own (hypermodel: the query;
  # t5_mtf: the query; t5_mtf_fewshot: demonstrations + query); 'concat' gives
  # the shared PEFT baselines few-shot inputs (HART's Prefix-Tuning / LoRA rows).
  c.data.mode = ''
  c.data.options = ml_collections.ConfigDict()

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adamw'
  c.optim.learning_rate = 5e-5
  c.optim.schedule = 'linear'       # linear decay to 0 (both papers)
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 0.0
  c.optim.moments_dtype = 'float32'  # 'bfloat16' halves the first moment's memory
  c.optim.max_grad_norm = 1.0

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 10_000
  c.train.grad_accum_steps = 1      # batch_size is split into this many micro batches
  c.train.log_every = 50
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3
  c.train.tensorboard = True
  c.train.export_downstream = True  # write workdir/downstream when the T5 is trained

  c.runtime = ml_collections.ConfigDict()
  # A full-size config refuses a CPU backend (a worker whose TPU/GPU JAX is
  # missing would train on its host CPU for days); True allows it.
  c.runtime.allow_cpu = False

  # Device mesh (`hyperflax.sharding`): sizes of the data / fsdp / tensor
  # axes; -1 = all remaining devices (the default is pure data parallelism).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # (logical axis, mesh axes) pairs overriding `sharding.LOGICAL_AXIS_RULES`,
  # e.g. (('vocab', None),); and overrides for the frozen downstream only.
  c.sharding_rules = ()
  c.frozen_sharding_rules = ()

  c.eval = ml_collections.ConfigDict()
  c.eval.name = 'p3_heldout'        # '' disables the evaluation after training
  c.eval.split = 'validation'
  c.eval.batch_size = 32
  c.eval.max_decode_length = 128
  c.eval.lengths = ()
  # Tasks with answer options are also answered by greedy generation (no
  # options shown), scored by exact match: what the demonstrations taught
  # about the output space, which rank classification hides.
  c.eval.also_generate = False
  c.eval.options = ml_collections.ConfigDict()
  return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `:tiny` variant: same method and kind, a few real steps on one CPU."""
  c.model.preset = 'tiny'
  c.model.init_from = ''
  c.model.allow_random_init = True  # tiny random T5s are what smoke runs train against
  c.runtime.allow_cpu = True
  c.model.dtype = 'float32'
  c.model.dropout_rate = 0.0
  c.hyper.dtype = 'float32'
  c.hyper.prefix_len = 4
  c.hyper.lora_rank = 2
  c.hyper.skip_hyperpretraining = True  # smoke runs; pipelines set init_from
  if c.hyper.decoder_layers is not None:
    c.hyper.decoder_layers = 1
  c.data.name = 'synthetic_caclm' if c.data.name in ('caclm_c4', 'synthetic_caclm') \
      else 'synthetic_fewshot'
  c.data.batch_size = 4
  c.data.num_shots = 4
  # CACLM pads to what its segments need; few-shot data gets short tiny lengths.
  c.data.lengths = () if c.data.name == 'synthetic_caclm' else (64, 16, 8)
  c.optim.learning_rate = 1e-3
  c.train.num_steps = 3
  c.train.grad_accum_steps = min(c.train.grad_accum_steps, 2)
  c.train.log_every = 1
  c.train.checkpoint_every = 2
  c.train.tensorboard = False
  c.eval.name = '' if c.data.name == 'synthetic_caclm' else 'synthetic_fewshot'
  c.eval.split = 'heldout_families'
  c.eval.batch_size = 8
  c.eval.max_decode_length = 4
  c.eval.options = ml_collections.ConfigDict({'max_queries': 4, 'heldout_tasks_per_family': 2})
  return c


CACLM_DATASETS = ('caclm_c4', 'synthetic_caclm')


def check_hyperpretraining(c: ml_collections.ConfigDict) -> None:
  """Raises (one line) when a hypermodel the paper hyperpretrains would start
  multi-task fine-tuning from plain T5 without being told to."""
  h = c.get('hyper') or {}
  needed = h.get('hyperpretrain_config', '')
  if c.get('method') != 'hypermodel' or not needed or c.data.name in CACLM_DATASETS:
    return
  init_from = h.get('init_from', '')
  if not init_from:
    if h.get('skip_hyperpretraining', False):
      logging.warning('config.hyper.skip_hyperpretraining=True: multi-task fine-tuning '
                      'starts from plain T5 (the paper hyperpretrains this model first)')
      return
    raise ValueError(
        f'config.hyper.init_from is empty but the paper hyperpretrains this hypermodel '
        f'(HyperTuning §4.2/§5.5): set --config.hyper.init_from=<workdir of '
        f'configs/{needed}.py> or --config.hyper.skip_hyperpretraining=True')
  from hyperflax.workdir import as_path, read_json  # (gs:// aware; names a damaged file)
  path = as_path(init_from) / 'config.json'
  if path.exists():  # absent for `hypertune` adapters: nothing to check
    data = read_json(path)
    source = (data.get('data') or {}).get('name') if isinstance(data, dict) else None
    if source not in CACLM_DATASETS:
      logging.warning('config.hyper.init_from=%s was trained on %r, not CACLM '
                      '(expected a configs/%s.py workdir)', init_from, source, needed)


def finish(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  if arg in (None, ''):
    return c
  if arg == 'tiny':
    return tiny(c)
  raise ValueError(f'unknown config variant {arg!r}; known: tiny')
