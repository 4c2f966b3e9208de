"""hyperflax.curriculum: the demo's stages chain as documented, and an unbound recall stage
goes on until it binds or reaches its cap (the transition's step varies with the seed)."""

import pytest

from hyperflax import curriculum


def _fake_trainer(monkeypatch, loss_at):
  """Replaces training with `loss_at(stage, num_steps)`; returns the (stage, steps) calls."""
  calls = []

  def train(cfg, stage_dir):
    stage = stage_dir.rsplit('/', 1)[1]
    calls.append((stage, cfg.train.num_steps, cfg.model.init_from))
    return {'metrics': {'loss': loss_at(stage, cfg.train.num_steps)}}

  monkeypatch.setattr(curriculum, '_train', train)
  return calls


def test_unbound_adjacent_recall_goes_on_until_it_binds(monkeypatch):
  calls = _fake_trainer(monkeypatch, lambda stage, n: 1.1 if stage == 'recall_adjacent'
                        and n < 1500 else 0.05)
  log = curriculum.pretrain('/w', 0, curriculum.DEMO_STEPS, max_recall_steps=2000)
  assert [(s, n) for s, n, _ in calls] == [('recall_adjacent', 1000), ('recall_adjacent', 1250),
                                           ('recall_adjacent', 1500), ('recall_separated', 500)]
  assert calls[-1][2] == '/w/recall_adjacent/downstream'
  assert [(r['stage'], r['steps'], r['bound']) for r in log] == [
      ('recall_adjacent', 1500, True), ('recall_separated', 500, True)]


def test_recall_that_never_binds_stops_at_the_cap_and_says_so(monkeypatch):
  calls = _fake_trainer(monkeypatch, lambda stage, n: 1.1)
  log = curriculum.pretrain('/w', 0, curriculum.DEMO_STEPS, max_recall_steps=1600)
  assert [n for s, n, _ in calls if s == 'recall_adjacent'] == [1000, 1250, 1500]
  assert not log[0]['bound'] and log[0]['steps'] == 1500 and log[0]['loss'] == 1.1


def test_demo_stages_chain_and_validate():
  plan = curriculum.stages(curriculum.DEMO_STEPS, ['prefix', 'lora', 'hart'],
                           t5_mtf_from='recall_separated')
  after = {name: prev for name, _, _, _, prev in plan}
  assert after == {'recall_adjacent': '', 'recall_separated': 'recall_adjacent',
                   'fewshot': 'recall_separated', 'prefix': 'fewshot', 'lora': 'fewshot',
                   'hart': 'fewshot', 't5_mtf': 'recall_separated'}
  for name, model, n, overrides, prev in plan:
    cfg = curriculum.config_for(model, n, 0, overrides, f'/x/{prev}/downstream' if prev else '')
    assert cfg.train.num_steps == curriculum.DEMO_STEPS.get(name, n)
    assert cfg.model.init_from == (f'/x/{prev}/downstream' if prev else '')
    assert cfg.data.vocab_path == 'words_compact' and cfg.optim.schedule == 'constant'


def test_unknown_hypermodel_is_refused_before_training(monkeypatch):
  calls = _fake_trainer(monkeypatch, lambda stage, n: 0.05)
  with pytest.raises(ValueError, match="unknown hypermodel variant.*'hyperlora'"):
    curriculum.run_demo('/tmp/never', kinds=['hart', 'hyperlora'])
  assert calls == []


def test_rerun_reports_the_steps_a_stage_really_trained(monkeypatch):
  """A rerun of the demo asks for 1,000 adjacent steps of a stage that went on to 1,250: the
  trainer trains nothing, and the log says 1,250."""
  import types
  trained = {'recall_adjacent': 1250, 'recall_separated': 500}
  monkeypatch.setattr(curriculum, '_train', lambda cfg, d: {
      'metrics': {'loss': 0.05},
      'state': types.SimpleNamespace(step=max(trained[d.rsplit('/', 1)[1]],
                                              cfg.train.num_steps))})
  log = curriculum.pretrain('/w', 0, curriculum.DEMO_STEPS, max_recall_steps=2000)
  assert [(r['stage'], r['steps']) for r in log] == [('recall_adjacent', 1250),
                                                      ('recall_separated', 500)]
