r"""Hypermodel-generated initialisation for further PEFT (HyperTuning §6, Tables 6/7).

  python -m hyperflax.peft_tuning --workdir=runs/hyper_init \
      --hyper_workdir=runs/demo/mtf_prefix,runs/demo/mtf_prefix_mlp,runs/demo/mtf_lora \
      --shared_workdir=runs/demo/mtf_shared_prefix,runs/demo/mtf_shared_lora \
      [--config=configs/x.py:tiny] [--learning_rates=1e-1,1e-2,1e-3] [--seeds=0,1,2]

For every evaluation task, the PEFT parameters of that one task (batch axis 1,
broadcast to the batch) are tuned on the task's demonstrations against the
frozen downstream T5, then its held-out queries are scored by rank
classification (`evaluate.evaluate_task`). Methods x initialisations:

  prefix      Prefix-Flat: the per-layer keys/values [1, L, P, F] are trained.
                random  a freshly initialised Prefix-MLP reparameterisation
                        (`SharedPrefix` init) run forward once (App. D);
                shared  the T5-MTF (Prefix) run's prefixes, run forward once;
                hyper   HyperT5-Prefix's prefixes from the task's demos.
  prefix_mlp  Prefix-MLP (Li & Liang): embeddings [2P, D] and the MLP are trained.
                random  `SharedPrefix` init; shared  the T5-MTF (Prefix) run's
                embeddings and MLP; hyper  HyperT5-Prefix-MLP's generated
                embeddings with its heads as the MLP (App. D).
  lora        LoRA a [1, L, D, R] and b [1, L, R, F] on q/v of every site.
                random  a ~ N(0, 1/D), b = 0 (an exact no-op); shared  the
                T5-MTF (LoRA) run's a, b; hyper  HyperT5-LoRA's a, b. The
                per-layer gate is kept fixed (1, or HyperT5-LoRA's tanh gate).

Each (method, init) is tuned at every learning rate and seed (AdamW, gradients
clipped to norm 1, minibatches of the demonstrations drawn per seed). As the
paper, the best learning rate is chosen per method-task pair on the mean over
seeds (`--select=average`: one per method/init); the table reports mean ± std
over seeds of the per-column averages. The selection reads the evaluation
queries themselves (the paper's protocol): the numbers are optimistic.
Writes `results.json` and `results.md` (tuned, and at step 0) to `--workdir`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import defaultdict
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from hyperflax import hyper as hyper_lib
from hyperflax.hyper.losses import cross_entropy
from hyperflax.model import T5, T5Config
from hyperflax.model import peft as peft_lib
from hyperflax.training.experiment import Experiment, t5_config_from

Array = jax.Array
METHODS = ('prefix', 'prefix_mlp', 'lora')
INITS = ('random', 'shared', 'hyper')
METHOD_LABELS = {'prefix': 'Prefix-Flat', 'prefix_mlp': 'Prefix-MLP', 'lora': 'LoRA'}
INIT_LABELS = {'random': 'Rand Init', 'shared': 'Shared Init', 'hyper': 'Hyper Init'}
# The generator kind that provides each (method, init).
SOURCE_KIND = {('prefix', 'shared'): 'shared_prefix', ('prefix_mlp', 'shared'): 'shared_prefix',
               ('lora', 'shared'): 'shared_lora', ('prefix', 'hyper'): 'prefix',
               ('prefix_mlp', 'hyper'): 'prefix_mlp', ('lora', 'hyper'): 'lora'}
_ONE_TOKEN = np.ones((1, 1), np.int32)  # the shared generators ignore their input


@dataclasses.dataclass
class GeneratorRun:
  """A trained PEFT generator (hypermodel or shared baseline).

  Attributes:
    exp: its Experiment (method 'hypermodel').
    params: its trained generator parameters (`trainable['hyper']`).
    workdir: where it was loaded from ('' if built in memory).
  """
  exp: Experiment
  params: Any
  workdir: str = ''
  _apply: Callable | None = dataclasses.field(default=None, repr=False)

  @property
  def kind(self) -> str:
    return self.exp.hyper_config.kind

  def generate(self, hyper_inputs) -> tuple[dict, dict]:
    """(peft, aux) for `hyper_inputs` [B, T] (jitted once per run)."""
    if self._apply is None:
      self._apply = jax.jit(self.exp.hyper.apply)
    return self._apply({'params': self.params}, jnp.asarray(hyper_inputs, jnp.int32))


def load_run(workdir: str) -> GeneratorRun:
  """Loads a `hyperflax.train` workdir of a hypermodel or shared baseline."""
  from hyperflax.train import load_trainable
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{workdir}: no config.json (not a hyperflax.train workdir)')
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.get('method') != 'hypermodel':
    raise ValueError(f'{path}: method={config.get("method")!r}; a PEFT generator run '
                     "(method 'hypermodel') is needed")
  exp = Experiment.from_config(config)
  if exp.hyper_config.fusion_in_decoder:
    raise ValueError(f'{path}: fusion_in_decoder generators change the downstream input; '
                     'their PEFT alone cannot be tuned')
  return GeneratorRun(exp, jax.tree.map(jnp.asarray, load_trainable(workdir)['hyper']), workdir)


# ---- parameterisations --------------------------------------------------------

def _split_lora(peft: dict) -> tuple[dict, dict]:
  """LoRA slots -> (trainable {a, b}, fixed {gate}); a missing gate is 1."""
  theta, fixed = {}, {}
  for path, leaf in peft_lib.flatten(peft).items():
    (fixed if path.endswith('/gate') else theta)[path] = leaf
  for path, a in list(theta.items()):
    if path.endswith('/a'):
      fixed.setdefault(path[:-1] + 'gate', jnp.ones(a.shape[:2], a.dtype))
  return peft_lib.unflatten(theta), peft_lib.unflatten(fixed)


@dataclasses.dataclass
class Tuning:
  """One PEFT method for one frozen T5: initialisation, forward, train, score.

  Attributes:
    method: 'prefix', 'prefix_mlp' or 'lora'.
    t5_config: the downstream config.
    prefix_len: P (prefix methods).
    lora_rank: R (LoRA).
    head_hidden: the Prefix-MLP hidden width (None: d_model).
  """
  method: str
  t5_config: T5Config
  prefix_len: int = 8
  lora_rank: int = 4
  head_hidden: int | None = None

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f'method={self.method!r}; known: {METHODS}')
    self.t5 = T5(self.t5_config)
    self.mlp = hyper_lib.SharedPrefix(hyper_lib.HyperConfig(
        kind='shared_prefix', prefix_len=self.prefix_len, head_hidden=self.head_hidden),
        self.t5_config)
    self.random_lora = hyper_lib.SharedLoRA(hyper_lib.HyperConfig(
        kind='shared_lora', lora_rank=self.lora_rank), self.t5_config)

  # (theta, fixed): theta is trained; fixed is part of the init (LoRA gates).
  def peft(self, theta, fixed) -> dict:
    """The one task's PEFT slots, batch axis 1."""
    if self.method == 'prefix_mlp':
      return self.mlp.apply({'params': theta}, _ONE_TOKEN)[0]
    if self.method == 'lora':
      return peft_lib.merge(theta, fixed)
    return theta

  def initial(self, init: str, seed: int = 0, run: GeneratorRun | None = None,
              hyper_inputs: Array | None = None) -> tuple[dict, dict]:
    """(theta, fixed) of `init`; `run` is the generator of SOURCE_KIND[(method, init)],
    `hyper_inputs` [1, T] the task's few-shot string (hyper init)."""
    if init not in INITS:
      raise ValueError(f'init={init!r}; known: {INITS}')
    if init == 'random':
      key = jax.random.PRNGKey(seed)
      if self.method == 'lora':
        params = self.random_lora.init(key, _ONE_TOKEN)['params']
        return _split_lora(self.random_lora.apply({'params': params}, _ONE_TOKEN)[0])
      params = nn.unbox(self.mlp.init(key, _ONE_TOKEN)['params'])
      if self.method == 'prefix_mlp':
        return params, {}
      return self.mlp.apply({'params': params}, _ONE_TOKEN)[0], {}
    want = SOURCE_KIND[(self.method, init)]
    if run is None or run.kind != want:
      raise ValueError(f'{self.method} ({init} init) needs a trained {want!r} generator, got '
                       f'{None if run is None else run.kind!r}')
    if init == 'shared':
      if self.method == 'prefix_mlp':
        return jax.tree.map(jnp.asarray, nn.unbox(run.params)), {}
      peft, _ = run.generate(_ONE_TOKEN)
      return _split_lora(peft) if self.method == 'lora' else (peft, {})
    if hyper_inputs is None:
      raise ValueError('hyper init needs the task\'s hyper_inputs')
    peft, aux = run.generate(hyper_inputs[:1])
    if self.method == 'prefix_mlp':
      return hyper_lib.shared_prefix_from_hypermodel(run.params, aux['embeddings']), {}
    return _split_lora(peft) if self.method == 'lora' else (peft, {})

  # ---- pure functions ----------------------------------------------------------

  def logits(self, theta, fixed, downstream, batch) -> Array:
    """[B, T, V] logits of the frozen T5 with the task's PEFT on every row."""
    peft = peft_lib.broadcast_to_batch(self.peft(theta, fixed), batch['encoder_inputs'].shape[0])
    return self.t5.apply({'params': downstream}, batch['encoder_inputs'],
                         batch['decoder_inputs'], peft=peft, deterministic=True)

  def loss(self, theta, fixed, downstream, batch) -> Array:
    loss_sum, weight_sum = cross_entropy(self.logits(theta, fixed, downstream, batch),
                                         batch['targets'], batch['target_weights'])
    return loss_sum / jnp.maximum(weight_sum, 1.0)

  def score(self, tuned: dict, downstream, batch) -> Array:
    """[B] summed target log-likelihood (as `step.make_score_step`)."""
    logits = self.logits(tuned['theta'], tuned['fixed'], downstream, batch)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(logp, batch['targets'][..., None].astype(jnp.int32), -1)[..., 0]
    return jnp.sum(tok * batch['target_weights'], axis=-1)

  def generate(self, tuned: dict, downstream, batch, max_decode_length: int) -> Array:
    from hyperflax.model.decoding import greedy_decode
    peft = peft_lib.broadcast_to_batch(self.peft(tuned['theta'], tuned['fixed']),
                                       batch['encoder_inputs'].shape[0])
    return greedy_decode(self.t5_config, downstream, batch['encoder_inputs'],
                         max_decode_length, peft=peft)


def optimizer(learning_rate, total_steps: int, schedule: str = 'constant',
              weight_decay: float = 0.0) -> optax.GradientTransformation:
  """AdamW after clipping to norm 1; `learning_rate` may be traced (one compile per sweep)."""
  if schedule == 'linear':
    learning_rate = optax.linear_schedule(learning_rate, 0.0, max(1, total_steps))
  elif schedule != 'constant':
    raise ValueError(f'schedule={schedule!r}; known: constant, linear')
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(learning_rate, weight_decay=weight_decay))


def make_tuner(tuning: Tuning, total_steps: int, schedule: str = 'constant',
               weight_decay: float = 0.0) -> tuple[Callable, Callable]:
  """Jitted `init_opt(theta, lr)` and `tune(theta, opt_state, fixed, downstream,
  pool, order [S, B] int32, lr) -> (theta, opt_state, losses [S])`: S steps of
  minibatches `pool[order[s]]`, one `lax.scan`, compiled once per shape."""
  grad_fn = jax.value_and_grad(tuning.loss)

  def init_opt(theta, lr):
    return optimizer(lr, total_steps, schedule, weight_decay).init(theta)

  def tune(theta, opt_state, fixed, downstream, pool, order, lr):
    opt = optimizer(lr, total_steps, schedule, weight_decay)

    def body(carry, idx):
      theta, opt_state = carry
      loss, grads = grad_fn(theta, fixed, downstream, jax.tree.map(lambda x: x[idx], pool))
      updates, opt_state = opt.update(grads, opt_state, theta)
      return (optax.apply_updates(theta, updates), opt_state), loss

    (theta, opt_state), losses = jax.lax.scan(body, (theta, opt_state), order)
    return theta, opt_state, losses

  return jax.jit(init_opt), jax.jit(tune)


def minibatch_order(num_examples: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
  """[steps, batch] example indices: shuffled epochs, a pure function of the seed."""
  rng = np.random.default_rng(seed)
  flat = np.concatenate([rng.permutation(num_examples)
                         for _ in range(-(-steps * batch_size // num_examples))])
  return flat[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)


# ---- tasks ----------------------------------------------------------------------

_FIELDS = ('encoder_inputs', 'decoder_inputs', 'targets', 'target_weights')


def train_pool(task, num_examples: int | None = None) -> dict[str, np.ndarray]:
  """The task's demonstrations as training rows [N, ...] (query -> target)."""
  from hyperflax.data.fewshot import Episode
  demos = list(task.demos)[:num_examples] if num_examples else list(task.demos)
  if not demos:
    raise ValueError(f'{task.name}: no demonstrations to tune on')
  eps = [Episode(task.name, d, (), task.data.definition, task.task_index, i)
         for i, d in enumerate(demos)]
  batch = task.converter.train_batch(eps)
  return {k: batch[k] for k in _FIELDS}


def task_hyper_inputs(task) -> np.ndarray:
  """[1, T] the few-shot string the hypermodel reads for `task` (a hyper-mode task)."""
  batch = next(iter(task.batches(1)))
  return batch['hyper_inputs'][:1]


def load_tasks(config, split: str, mode: str, tasks_per_group: int = 0):
  """`config.eval` tasks of `split` in `mode`; the first `tasks_per_group` per group."""
  from hyperflax import data
  d, e = config.data, config.eval
  tasks = data.get_eval_tasks(
      e.name, split, seed=config.seed,
      lengths=tuple(e.get('lengths') or d.get('lengths') or ()) or None,
      num_shots=d.num_shots, data_dir=d.get('data_dir') or None, mode=mode,
      vocab_path=d.get('vocab_path') or None, **dict(e.get('options', {}) or {}))
  if tasks_per_group:
    seen = defaultdict(int)
    keep = []
    for t in tasks:
      seen[t.group or t.name] += 1
      if seen[t.group or t.name] <= tasks_per_group:
        keep.append(t)
    tasks = keep
  return tasks


# ---- the sweep ------------------------------------------------------------------

def _plain(tree):
  """Nested plain dicts of jnp arrays (one pytree structure for every init)."""
  if hasattr(tree, 'items'):
    return {k: _plain(v) for k, v in tree.items()}
  return jnp.asarray(tree)


def _sizes(config, runs: dict[str, GeneratorRun], methods) -> dict:
  """prefix_len / lora_rank / head_hidden shared by every generator used."""
  h = config.get('hyper', {}) or {}
  sizes = {'prefix_len': h.get('prefix_len', 8), 'lora_rank': h.get('lora_rank', 4),
           'head_hidden': h.get('head_hidden', None)}
  fields = {'prefix_len': ('prefix', 'prefix_mlp', 'shared_prefix'),
            'head_hidden': ('prefix_mlp', 'shared_prefix'), 'lora_rank': ('lora', 'shared_lora')}
  for name, kinds in fields.items():
    values = {run.workdir or kind: getattr(run.exp.hyper_config, name)
              for kind, run in runs.items() if kind in kinds}
    if len(set(values.values())) > 1:
      raise ValueError(f'the generators disagree on {name}: {values}')
    if values:
      sizes[name] = next(iter(values.values()))
  return sizes


def run_sweep(config, runs: dict[str, GeneratorRun], downstream, *, methods=METHODS,
              inits=INITS, learning_rates=(1e-1, 1e-2, 1e-3), seeds=(0, 1, 2), steps: int = 50,
              batch_size: int = 8, split: str = 'validation', tasks_per_group: int = 0,
              train_examples: int = 0, eval_every: int = 0, schedule: str = 'constant',
              weight_decay: float = 0.0, log: Callable = logging.info) -> list[dict]:
  """Tunes every (method, init, task, learning rate, seed); one record each.

  Args:
    config: supplies `model` (the downstream), `data` and `eval` (the tasks).
    runs: generator kind -> GeneratorRun (see SOURCE_KIND).
    downstream: the frozen T5's parameters.

  Returns:
    Records {method, init, task, group, lr, seed, score, score_step0,
    loss_first, loss_last, curve [[step, score], ...]}.
  """
  from hyperflax import evaluate as eval_lib
  for method in methods:
    for init in inits:
      kind = SOURCE_KIND.get((method, init))
      if kind and kind not in runs:
        flag = '--hyper_workdir' if init == 'hyper' else '--shared_workdir'
        raise ValueError(f'{METHOD_LABELS[method]} ({INIT_LABELS[init]}) needs a trained '
                         f'{kind!r} generator: pass its workdir in {flag}')
  if eval_every and steps % eval_every:
    raise ValueError(f'--steps={steps} must be a multiple of --eval_every={eval_every}')
  chunk = eval_every or steps
  t5_config = t5_config_from(config)
  sizes = _sizes(config, runs, methods)
  tasks = load_tasks(config, split, 'zero_shot', tasks_per_group)
  hyper_tasks = load_tasks(config, split, 'hyper', tasks_per_group) if 'hyper' in inits else None
  eval_batch = int(config.eval.batch_size)
  max_decode = int(config.eval.get('max_decode_length', 32))
  records = []
  for method in methods:
    tuning = Tuning(method, t5_config, **sizes)
    init_opt, tune = make_tuner(tuning, steps, schedule, weight_decay)
    score_fn = jax.jit(tuning.score)
    generate_fn = jax.jit(lambda t, d, b: tuning.generate(t, d, b, max_decode))

    def evaluate(theta, fixed, task):
      result, _ = eval_lib.evaluate_task(task, score_fn, generate_fn,
                                         {'theta': theta, 'fixed': fixed}, downstream,
                                         eval_batch)
      return eval_lib.headline(result)

    for t, task in enumerate(tasks):
      t0 = time.time()
      pool = jax.tree.map(jnp.asarray, train_pool(task, train_examples or None))
      num_examples = int(pool['targets'].shape[0])
      hyper_inputs = jnp.asarray(task_hyper_inputs(hyper_tasks[t])) if hyper_tasks else None
      for init in inits:
        kind = SOURCE_KIND.get((method, init))
        run = runs.get(kind)
        start = None
        for seed in seeds:
          if start is None or init == 'random':  # only random init depends on the seed
            theta0, fixed = tuning.initial(init, seed, run, hyper_inputs)
            theta0, fixed = _plain(theta0), _plain(fixed)
            score0 = evaluate(theta0, fixed, task)
            start = (theta0, fixed, score0)
          theta0, fixed, score0 = start
          order = minibatch_order(num_examples, steps, batch_size, seed)
          for lr in learning_rates:
            lr_arr = jnp.float32(lr)
            theta, opt_state = theta0, init_opt(theta0, lr_arr)
            curve, losses = [[0, score0]], []
            for begin in range(0, steps, chunk):
              theta, opt_state, chunk_losses = tune(theta, opt_state, fixed, downstream, pool,
                                                    order[begin:begin + chunk], lr_arr)
              losses.append(np.asarray(chunk_losses))
              curve.append([begin + chunk, evaluate(theta, fixed, task)])
            losses = np.concatenate(losses) if losses else np.zeros(1)
            records.append({'method': method, 'init': init, 'task': task.name,
                            'group': task.group or task.name, 'lr': float(lr), 'seed': int(seed),
                            'score_step0': float(score0), 'score': float(curve[-1][1]),
                            'loss_first': float(losses[0]), 'loss_last': float(losses[-1]),
                            'curve': curve})
      done = [r for r in records if r['method'] == method and r['task'] == task.name]
      log(f'{METHOD_LABELS[method]} {task.name}: {len(done)} runs in {time.time() - t0:.0f}s; '
          + ', '.join(f'{i} {max(r["score"] for r in done if r["init"] == i):.1f}'
                      for i in inits))
  return records



# ---- the table ------------------------------------------------------------------

def summarise(records: list[dict], select: str = 'task') -> dict:
  """Table 6 from sweep records.

  For each (method, init) the learning rate is chosen per task (`select='task'`,
  the paper's "best average result over 3 random seeds" per method-task pair)
  or once over all tasks (`'average'`), on the mean over seeds. Each column
  (task group) is the mean over its tasks; AVG the mean over columns; both are
  computed per seed and reported as mean and std (numpy's, ddof=0) over seeds.

  Returns:
    {'columns': [...], 'rows': {label: {column: {'mean', 'std'}}},
     'step0': same for the scores before tuning, 'best_lr': {label: {task: lr}}}.
  """
  if select not in ('task', 'average'):
    raise ValueError(f"select={select!r}; known: 'task', 'average'")
  columns, group_of = [], {}
  for r in records:
    if r['group'] not in columns:
      columns.append(r['group'])
    group_of[r['task']] = r['group']
  # (method, init) -> task -> lr -> seed -> record
  table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
  for r in records:
    table[(r['method'], r['init'])][r['task']][r['lr']][r['seed']] = r
  rows, step0, best = {}, {}, {}
  order = {m: i for i, m in enumerate(METHODS)} | {i: j for j, i in enumerate(INITS)}
  for (method, init) in sorted(table, key=lambda k: (order[k[0]], order[k[1]])):
    by_task = table[(method, init)]
    label = f'{METHOD_LABELS[method]} ({INIT_LABELS[init]})'
    mean_of = lambda runs, key='score': float(np.mean([r[key] for r in runs.values()]))
    if select == 'average':
      lrs = next(iter(by_task.values())).keys()
      lr = max(lrs, key=lambda lr: np.mean([mean_of(by_task[t][lr]) for t in by_task]))
      chosen = {t: lr for t in by_task}
    else:
      chosen = {t: max(lrs, key=lambda lr: mean_of(lrs[lr])) for t, lrs in by_task.items()}
    best[label] = chosen
    seeds = sorted(next(iter(by_task[next(iter(by_task))].values())))
    for out, key in ((rows, 'score'), (step0, 'score_step0')):
      per_seed = {c: [] for c in columns}  # column -> [per-seed column score]
      for seed in seeds:
        for c in columns:
          vals = [by_task[t][chosen[t]][seed][key] for t in by_task if group_of[t] == c]
          per_seed[c].append(float(np.mean(vals)) if vals else float('nan'))
      present = [c for c in columns if not np.isnan(per_seed[c][0])]
      per_seed['AVG'] = [float(np.mean([per_seed[c][s] for c in present]))
                         for s in range(len(seeds))]
      out[label] = {c: {'mean': float(np.mean(v)), 'std': float(np.std(v))}
                    for c, v in per_seed.items()}
  return {'columns': columns + ['AVG'], 'rows': rows, 'step0': step0, 'best_lr': best}


def format_table(rows: dict, columns: list[str], first: str = 'Method') -> str:
  """A markdown table of 'mean ± std' cells."""
  cell = lambda v: '' if v is None or np.isnan(v['mean']) else f'{v["mean"]:.1f} ± {v["std"]:.1f}'
  lines = ['| ' + ' | '.join([first] + columns) + ' |',
           '|:--' + '|--:' * len(columns) + '|']
  for label, values in rows.items():
    lines.append('| ' + ' | '.join([label] + [cell(values.get(c)) for c in columns]) + ' |')
  return '\n'.join(lines)


def write_results(workdir: str, records: list[dict], summary: dict, settings: dict) -> str:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump({'settings': settings, 'summary': summary, 'records': records}, f, indent=1)
  text = (f'Tuned PEFT, accuracy (%) mean ± std over seeds {settings["seeds"]}, best learning '
          f'rate of {settings["learning_rates"]} per {settings["select"]}; '
          f'{settings["steps"]} steps\n\n' + format_table(summary['rows'], summary['columns'])
          + '\n\nBefore tuning (step 0)\n\n'
          + format_table(summary['step0'], summary['columns']) + '\n')
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(text)
  return text


# ---- command line -------------------------------------------------------------------

def _config_and_runs(config, hyper_workdirs, shared_workdirs):
  runs: dict[str, GeneratorRun] = {}
  for flag, dirs, kinds in (('--hyper_workdir', hyper_workdirs, hyper_lib.HYPER_KINDS),
                            ('--shared_workdir', shared_workdirs, hyper_lib.SHARED_KINDS)):
    for workdir in dirs or ():
      run = load_run(workdir)
      if run.kind not in kinds:
        raise ValueError(f'{flag}={workdir}: a {run.kind!r} run; expected one of {kinds}')
      if run.kind in runs:
        raise ValueError(f'two {run.kind!r} runs: {runs[run.kind].workdir} and {workdir}')
      runs[run.kind] = run
  if config is None:
    if not runs:
      raise ValueError('no --config and no generator workdir to take the config from')
    config = next(iter(runs.values())).exp.config
  init_from = config.model.get('init_from', '')
  if not init_from:
    raise ValueError('config.model.init_from is empty: PEFT tuning needs the frozen T5 '
                     'the generators were trained against')
  for run in runs.values():
    theirs = run.exp.config.model.get('init_from', '')
    if os.path.abspath(theirs) != os.path.abspath(init_from):
      raise ValueError(f'{run.workdir}: trained against config.model.init_from={theirs!r}, '
                       f'but the config tunes {init_from!r}')
  return config, runs


def main(argv=None) -> None:
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'config supplying model/data/eval (default: '
                                  "the first generator run's config.json)", lock_config=False)
  flags.DEFINE_string('workdir', None, 'where results.json / results.md are written')
  flags.DEFINE_list('hyper_workdir', [], 'trained hypermodel runs (kinds prefix, prefix_mlp, lora)')
  flags.DEFINE_list('shared_workdir', [], 'trained T5-MTF shared runs (shared_prefix, shared_lora)')
  flags.DEFINE_list('methods', list(METHODS), f'PEFT methods, of {METHODS}')
  flags.DEFINE_list('inits', list(INITS), f'initialisations, of {INITS}')
  flags.DEFINE_list('learning_rates', ['1e-1', '1e-2', '1e-3'], 'learning-rate sweep')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'seeds (random init, minibatch order)')
  flags.DEFINE_integer('steps', 50, 'optimiser steps per run')
  flags.DEFINE_integer('batch_size', 8, 'training minibatch (rows of the demonstrations)')
  flags.DEFINE_integer('train_examples', 0, 'tune on the first N demonstrations (0: all)')
  flags.DEFINE_string('split', None, 'evaluation split (default: config.eval.split)')
  flags.DEFINE_integer('tasks_per_group', 0, 'first N tasks of each group (0: all)')
  flags.DEFINE_integer('eval_every', 0, 'also score every N steps (0: only at the end)')
  flags.DEFINE_enum('schedule', 'constant', ['constant', 'linear'], 'learning-rate schedule')
  flags.DEFINE_float('weight_decay', 0.0, 'AdamW weight decay')
  flags.DEFINE_enum('select', 'task', ['task', 'average'], 'best learning rate per task (the '
                    'paper) or per method/init over all tasks')
  flags.mark_flags_as_required(['workdir'])

  def run(_):
    logging.getLogger().setLevel(logging.WARNING)
    f = flags.FLAGS
    config, runs = _config_and_runs(f.config, f.hyper_workdir, f.shared_workdir)
    exp = Experiment(config, t5_config_from(config), None)
    downstream = exp.load_downstream(jax.random.PRNGKey(0))
    split = f.split or config.eval.get('split', 'validation')
    settings = {k: getattr(f, k) for k in (
        'hyper_workdir', 'shared_workdir', 'methods', 'inits', 'steps', 'batch_size',
        'train_examples', 'tasks_per_group', 'eval_every', 'schedule', 'weight_decay', 'select')}
    settings.update(learning_rates=[float(x) for x in f.learning_rates],
                    seeds=[int(x) for x in f.seeds], split=split,
                    downstream=config.model.init_from)
    t0 = time.time()
    records = run_sweep(config, runs, downstream, methods=f.methods, inits=f.inits,
                        learning_rates=settings['learning_rates'], seeds=settings['seeds'],
                        steps=f.steps, batch_size=f.batch_size, split=split,
                        tasks_per_group=f.tasks_per_group, train_examples=f.train_examples,
                        eval_every=f.eval_every, schedule=f.schedule,
                        weight_decay=f.weight_decay, log=print)
    settings['seconds'] = round(time.time() - t0)
    text = write_results(f.workdir, records, summarise(records, f.select), settings)
    print('\n' + text)

  app.run(run, argv=argv)


if __name__ == '__main__':
  main()
