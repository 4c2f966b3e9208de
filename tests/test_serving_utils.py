"""Helpers for the serving/adapter tests: tiny models, hypermodel workdirs, tasks.

Workdirs are written the way `hyperflax.train` writes them (config.json +
an orbax `checkpoints/` via `training.checkpointing.Checkpointer`), from a
freshly initialised hypermodel whose LoRA gates are opened (a fresh
HyperT5-LoRA is an exact no-op, which would make every parity check trivial).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from hf_fixtures import build_torch_t5, save_torch_t5

# The real T5 vocabulary size (the few-shot markers <x>, <y> are ids 32100/32101),
# tiny everywhere else; uneven stacks catch encoder/decoder mix-ups.
MODEL = dict(vocab_size=32128, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=3,
             num_decoder_layers=2)
LENGTHS = (64, 16, 6)  # hypermodel input, query, target


def make_model_dir(path: str, seed: int = 0, **overrides):
  ref = build_torch_t5(seed=seed, **{**MODEL, **overrides})
  save_torch_t5(ref, path)
  return ref


def make_workdir(path: str, model_dir: str, kind: str, *, seed: int = 0, step: int = 5,
                 train_downstream: bool = False, hyper_from: str | None = None,
                 **hyper) -> str:
  """A hypermodel training workdir at `step` (no training: random heads).

  `hyper_from` reuses another workdir's generator instead of initialising one
  (initialisation compiles; the HyperT5+ case only needs a trained T5 next to it).
  """
  import flax
  from hyperflax.config_base import base_config, tiny
  from hyperflax.training.checkpointing import Checkpointer
  from hyperflax.training.experiment import Experiment
  config = tiny(base_config())
  config.seed = seed
  config.model.init_from = model_dir
  config.hyper.kind = kind
  config.train_downstream = train_downstream
  config.data.lengths = LENGTHS
  config.data.num_shots = 16  # 16 demonstrations do not fit in 64 tokens: some are dropped
  for key, value in hyper.items():
    config.hyper[key] = value
  if hyper_from:
    from hyperflax.pretrained import load_pretrained
    from hyperflax.train import load_trainable
    trainable = {'hyper': load_trainable(hyper_from)['hyper']}
    if train_downstream:
      trainable['downstream'] = load_pretrained(model_dir)[1]
  else:
    trainable, _ = Experiment.from_config(config).init(jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  flat = flax.traverse_util.flatten_dict(jax.tree.map(np.asarray, trainable['hyper']))
  for key in flat:
    if key[-1].endswith('_gate'):  # open the gates: tanh(~0.8)
      flat[key] = (0.8 + 0.3 * rng.normal(size=flat[key].shape)).astype(np.float32)
  trainable['hyper'] = flax.traverse_util.unflatten_dict(flat)
  if train_downstream:  # a "trained" T5: differs from init_from
    trainable['downstream'] = jax.tree.map(
        lambda x: np.asarray(x) + 0.05 * rng.normal(size=x.shape).astype(np.float32),
        trainable['downstream'])
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  ckpt = Checkpointer(os.path.join(path, 'checkpoints'), async_save=False)
  ckpt.save(step, {'step': np.int32(step), 'trainable': trainable},
            {'step': step, 'method': 'hypermodel', 'hyper_kind': kind})
  ckpt.close()
  return path


def synthetic_tasks(count: int = 3):
  """`count` held-out synthetic tasks (16 demonstrations, 4 queries with options)."""
  from hyperflax.data import synthetic
  suite = synthetic.SyntheticSuite(train_tasks_per_family=1, heldout_tasks_per_family=1)
  return suite.eval_tasks('heldout_tasks', num_shots=16, max_queries=4)[:count]


def write_examples(path: str, task) -> str:
  with open(path, 'w') as f:
    for d in task.demos:
      f.write(json.dumps({'input': d.input, 'output': d.target}) + '\n')
  return path


def torch_inputs(server, texts, targets=None):
  """Our exact token ids as torch tensors (both sides read the same ids)."""
  import torch
  enc = server.encode(texts)
  out = {'input_ids': torch.tensor(enc, dtype=torch.long),
         'attention_mask': torch.tensor(enc > 0, dtype=torch.long)}
  if targets is not None:
    _, dec, tgt, _ = server._target_batch(texts, targets)  # pylint: disable=protected-access
    out['decoder_input_ids'] = torch.tensor(dec, dtype=torch.long)
    return out, tgt
  return out


def until_eos(row) -> list[int]:
  row = [int(x) for x in row]
  return row[:row.index(1) + 1] if 1 in row else row


_ENV: dict = {}


def shared_env(tmp_path_factory) -> dict:
  """Built once per test process: a model dir, a LoRA and a prefix hypermodel
  workdir, three synthetic tasks and each task's LoRA adapter + PEFT export."""
  if _ENV:
    return _ENV
  from hyperflax import adapters as adapters_lib
  from hyperflax import hypertune, serving
  root = str(tmp_path_factory.mktemp('serving'))
  model_dir = os.path.join(root, 'model')
  make_model_dir(model_dir)
  lora = make_workdir(os.path.join(root, 'wd_lora'), model_dir, 'lora')
  tasks = synthetic_tasks(3)
  adapters, pefts = [], []
  for i, task in enumerate(tasks):
    examples = write_examples(os.path.join(root, f'task{i}.jsonl'), task)
    out, peft_dir = os.path.join(root, f'lora{i}'), os.path.join(root, f'peft{i}')
    if i == 0:  # the CLI once; then the warm API (the hypermodel stays loaded)
      assert hypertune.main(['--checkpoint', lora, '--examples', examples, '--out', out,
                             '--export-peft', peft_dir]) == 0
    else:
      adapters_lib.export_peft(serving.hypertune(lora, examples, out=out), peft_dir)
    adapters.append(out)
    pefts.append(peft_dir)
  # Batches of 4 rows everywhere: tests share compiled shapes.
  server = serving.Server(model_dir, batch_size=4)
  for i, out in enumerate(adapters):
    server.add_adapter(f'lora{i}', out)
  _ENV.update(root=root, model_dir=model_dir, lora_workdir=lora, server=server,
              tasks=tasks, adapters=adapters, pefts=pefts)
  return _ENV
