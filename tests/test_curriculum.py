"""hyperflax.curriculum: the demo's stages chain as documented, an unbound recall stage goes on
until it binds or reaches its cap (the transition's step varies with the seed), and a workdir
trained with other flags is refused before anything trains."""

import json
import types

import pytest

from hyperflax import curriculum, demo


def _fake_trainer(monkeypatch, loss_at):
  """Replaces training with `loss_at(stage, num_steps)` (a stage resumes where it stopped);
  returns the (stage, steps asked, init_from) calls."""
  calls, reached = [], {}

  def train(cfg, stage_dir):
    stage = stage_dir.rstrip('/').rsplit('/', 1)[1]
    calls.append((stage, cfg.train.num_steps, cfg.model.init_from))
    reached[stage] = max(reached.get(stage, 0), cfg.train.num_steps)
    return {'metrics': {'loss': loss_at(stage, reached[stage])},
            'state': types.SimpleNamespace(step=reached[stage])}

  monkeypatch.setattr(demo, '_train', train)
  return calls


def test_unbound_adjacent_recall_goes_on_until_it_binds(monkeypatch, tmp_path):
  calls = _fake_trainer(monkeypatch, lambda stage, n: 1.1 if stage == 'recall_adjacent'
                        and n < 1500 else 0.05)
  log = curriculum.pretrain(str(tmp_path), 0, curriculum.DEMO_STEPS, max_recall_steps=2000)
  assert [(s, n) for s, n, _ in calls] == [('recall_adjacent', 1000), ('recall_adjacent', 1250),
                                           ('recall_adjacent', 1500), ('recall_separated', 500)]
  assert calls[-1][2] == str(tmp_path / 'recall_adjacent' / 'downstream')
  assert [(r['stage'], r['steps'], r['bound']) for r in log] == [
      ('recall_adjacent', 1500, True), ('recall_separated', 500, True)]
  # A rerun asks for 1,000 steps again; the trainer has nothing to train and the log says
  # what the stage reached.
  again = curriculum.pretrain(str(tmp_path), 0, curriculum.DEMO_STEPS, max_recall_steps=2000)
  assert [(r['stage'], r['steps']) for r in again] == [('recall_adjacent', 1500),
                                                       ('recall_separated', 500)]


def test_recall_that_never_binds_stops_at_the_cap_and_says_so(monkeypatch, tmp_path):
  calls = _fake_trainer(monkeypatch, lambda stage, n: 1.1)
  log = curriculum.pretrain(str(tmp_path), 0, curriculum.DEMO_STEPS, max_recall_steps=1600)
  assert [n for s, n, _ in calls if s == 'recall_adjacent'] == [1000, 1250, 1500]
  assert [n for s, n, _ in calls if s == 'recall_separated'] == [500, 750, 1000, 1250, 1500]
  assert not log[0]['bound'] and log[0]['steps'] == 1500 and log[0]['loss'] == 1.1


def test_a_workdir_trained_with_other_steps_is_refused_before_training(monkeypatch, tmp_path):
  _fake_trainer(monkeypatch, lambda stage, n: 0.05)
  curriculum.pretrain(str(tmp_path), 0, {k: 4 for k in curriculum.DEMO_STEPS}, 0)  # --quick
  calls = _fake_trainer(monkeypatch, lambda stage, n: 0.05)
  with pytest.raises(ValueError, match=r'recall_adjacent/curriculum.json: this stage was '
                                       r'trained with other settings: steps .*another --workdir'):
    curriculum.pretrain(str(tmp_path), 0, curriculum.DEMO_STEPS, 2000)
  with pytest.raises(ValueError, match=r'other settings: seed 0 \(now 1\)'):
    curriculum.pretrain(str(tmp_path), 1, {k: 4 for k in curriculum.DEMO_STEPS}, 0)
  assert calls == []


def test_run_demo_chains_scores_and_writes_its_table(monkeypatch, tmp_path, capsys):
  # Adjacent recall never binds: the header must say so.
  _fake_trainer(monkeypatch, lambda stage, n: 1.1 if stage == 'recall_adjacent' else 0.05)
  seen = []

  def scored(args):
    workdir, name, model, n, overrides, upstream, seed, plan, splits, quick_eval = args
    seen.append((name, n, upstream))
    acc = {'t5_mtf': 40.0, 'fewshot': 60.0, 'hart': 65.0, 'lora': 45.0}[name]
    return name, n, {s: acc for s in splits}, {s: (38.9, 52.2) for s in splits}

  monkeypatch.setattr(curriculum, '_train_scored', scored)
  table = curriculum.run_demo(str(tmp_path), kinds=['hart', 'lora', 'hart'], jobs=1,
                              max_recall_steps=1000)
  assert seen == [('fewshot', 250, {'stage': 'recall_separated', 'steps': 500}),
                  ('t5_mtf', 250, {'stage': 'recall_separated', 'steps': 500}),
                  ('hart', 150, {'stage': 'fewshot', 'steps': 250}),
                  ('lora', 150, {'stage': 'fewshot', 'steps': 250})]
  assert list(table) == ['Chance', demo.MAJORITY_LABEL, 'T5-MTF', 'T5-MTF-Few-shot', 'HART',
                         'HyperT5-LoRA']
  saved = json.loads((tmp_path / 'results.json').read_text())
  assert saved['table'] == table and saved['table']['HART']['heldout_families'] == 65.0
  assert [r['bound'] for r in saved['pretraining']] == [False, True]
  out = capsys.readouterr().out
  assert 'recall_adjacent 1000 steps, loss 1.100 (NOT BOUND' in out
  assert (tmp_path / 'results.md').read_text().count('NOT BOUND') == 1


def test_demo_and_classic_refuse_each_others_workdirs(tmp_path):
  (tmp_path / 'mtf_lora').mkdir()
  with pytest.raises(ValueError, match='holds a --classic demo run'):
    curriculum.run_demo(str(tmp_path))
  other = tmp_path / 'new'
  (other / 'recall_adjacent').mkdir(parents=True)
  with pytest.raises(ValueError, match='holds a run of the default'):
    demo.run(str(other), quick=True)


@pytest.mark.parametrize('flag, message', [
    ('--kinds=hart,hyperlora', "unknown hypermodel variant(s) ['hyperlora']"),
    ('--scale=0', '--scale=0.0: expected a positive number'),
    ('--workdir=', '--workdir is empty'),
])
def test_bad_flags_get_one_line_and_exit_2(flag, message, tmp_path, capsys):
  argv = ['hyperflax.demo', f'--workdir={tmp_path / "w"}', flag]
  assert demo.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and message in err[0]
  assert not (tmp_path / 'w').exists()


def test_demo_stages_chain_and_validate():
  plan = curriculum.stages(curriculum.DEMO_STEPS, ['prefix', 'lora', 'hart'],
                           t5_mtf_from='recall_separated')
  after = {name: prev for name, _, _, _, prev in plan}
  assert after == {'recall_adjacent': '', 'recall_separated': 'recall_adjacent',
                   'fewshot': 'recall_separated', 'prefix': 'fewshot', 'lora': 'fewshot',
                   'hart': 'fewshot', 't5_mtf': 'recall_separated'}
  for name, model, n, overrides, prev in plan:
    cfg = curriculum.config_for(model, n, 0, overrides, f'/x/{prev}/downstream' if prev else '')
    assert cfg.model.init_from == (f'/x/{prev}/downstream' if prev else '')
    assert cfg.data.vocab_path == 'words_compact' and cfg.optim.schedule == 'constant'
    assert cfg.train.num_steps == (150 if name in ('prefix', 'lora', 'hart')
                                   else {'recall_adjacent': 1000, 'recall_separated': 500,
                                         'fewshot': 250, 't5_mtf': 250}[name])
