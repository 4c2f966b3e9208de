"""Tests for hyperflax.metrics against hand-computed values.

Every expected number below is derived by hand in the comments, not by
running the code under test.
"""

import math

import numpy as np
import pytest

from hyperflax import metrics as M

# ---------------------------------------------------------------------------
# normalize_answer / exact_match (official S-NI: lower, strip punct, fix ws,
# articles KEPT)
# ---------------------------------------------------------------------------


def test_normalize_answer_official_keeps_articles():
    # lower -> "  the cat!!  sat. " ; punct removed -> "  the cat  sat " ;
    # whitespace collapsed -> "the cat sat".
    assert M.normalize_answer("  The Cat!!  sat. ") == "the cat sat"
    # Apostrophes are punctuation and are deleted, not replaced by a space.
    assert M.normalize_answer("Don't") == "dont"


def test_normalize_answer_squad_variant_removes_articles():
    assert M.normalize_answer("The Cat!", remove_articles=True) == "cat"
    # "an" inside a word ("another") must survive: \b-anchored.
    assert M.normalize_answer("An another", remove_articles=True) == "another"


def test_exact_match_rescued_by_case_punctuation_whitespace():
    assert M.exact_match("The Cat!", ["the cat"]) == 1.0
    assert M.exact_match("  Hello,\tWorld. ", "hello world") == 1.0


def test_exact_match_articles_matter_in_official_definition():
    # Official S-NI keeps articles: "the cat" != "cat".
    assert M.exact_match("The Cat!", ["cat"]) == 0.0
    # SQuAD-style normalisation would rescue it.
    assert M.exact_match("The Cat!", ["cat"], remove_articles=True) == 1.0


def test_exact_match_not_rescued():
    # Normalisation does not stem or reorder.
    assert M.exact_match("cats", ["cat"]) == 0.0
    assert M.exact_match("cat the", ["the cat"]) == 0.0


def test_exact_match_max_over_references():
    assert M.exact_match("Yes.", ["no", "YES", "maybe"]) == 1.0


def test_empty_reference_list_rejected():
    with pytest.raises(ValueError):
        M.exact_match("x", [])


# ---------------------------------------------------------------------------
# ROUGE-L
# ---------------------------------------------------------------------------


def test_rouge_l_hand_worked_lcs():
    # pred = the cat sat on the mat   (6 tokens)
    # ref  = a cat on a mat           (5 tokens)
    # LCS  = cat on mat               (3)
    # P = 3/6 = 0.5, R = 3/5 = 0.6, F = 2PR/(P+R) = 0.6/1.1 = 6/11
    assert M.rouge_l("the cat sat on the mat", ["a cat on a mat"]) == pytest.approx(
        6 / 11
    )


def test_rouge_l_stemming():
    # Porter stemming (tokens > 3 chars): running -> run, runs -> run;
    # "he"/"was" untouched.
    # pred = he was run (3), ref = he run (2), LCS = he run (2)
    # P = 2/3, R = 1, F = (4/3)/(5/3) = 0.8
    assert M.rouge_l("He was running", ["he runs"]) == pytest.approx(0.8)
    # Identical after stemming -> perfect score.
    assert M.rouge_l("running", "run") == pytest.approx(1.0)


def test_rouge_l_max_over_references():
    # vs "dog": LCS 0 -> 0.  vs "the cat": P = 1/1, R = 1/2, F = 2/3.
    assert M.rouge_l("cat", ["dog", "the cat"]) == pytest.approx(2 / 3)


def test_rouge_l_empty_prediction_is_zero():
    assert M.rouge_l("", ["something"]) == 0.0


# ---------------------------------------------------------------------------
# compute_metrics / compute_grouped_metrics
# ---------------------------------------------------------------------------

# Per example (EM, ROUGE-L F):
#   0: "Yes."                vs ["yes"]            -> (1, 1)
#   1: "the cat sat on the mat" vs ["a cat on a mat"] -> (0, 6/11)
#   2: "He was running"      vs ["no", "he runs"]   -> (0, 0.8)
#   3: ""                    vs ["something"]       -> (0, 0)
PREDS = ["Yes.", "the cat sat on the mat", "He was running", ""]
REFS = [["yes"], ["a cat on a mat"], ["no", "he runs"], ["something"]]


def test_compute_metrics_hand_computed():
    out = M.compute_metrics(PREDS, REFS)
    # EM = 100 * 1/4 = 25
    # ROUGE-L = 100 * (1 + 6/11 + 0.8 + 0) / 4 = 100 * 2.345454.../4
    #         = 58.636363... -> rounded to 4 dp = 58.6364
    assert out == {"exact_match": 25.0, "rougeL": 58.6364}


def test_compute_metrics_unrounded():
    out = M.compute_metrics(PREDS, REFS, round_digits=None)
    assert out["rougeL"] == pytest.approx(100 * (1 + 6 / 11 + 0.8) / 4)


def test_compute_grouped_metrics_hand_computed():
    groups = ["a", "b", "a", "b"]
    out = M.compute_grouped_metrics(PREDS, REFS, groups)
    # a = examples 0, 2: EM 100*(1+0)/2 = 50; RL 100*(1+0.8)/2 = 90
    # b = examples 1, 3: EM 0;               RL 100*(6/11+0)/2 = 27.27272.. -> 27.2727
    assert out == {
        "exact_match_for_a": 50.0,
        "rougeL_for_a": 90.0,
        "exact_match_for_b": 0.0,
        "rougeL_for_b": 27.2727,
    }


def test_category_group_name():
    assert M.category_group_name("Textual  Entailment") == "textual_entailment"


def test_compute_metrics_length_mismatch():
    with pytest.raises(ValueError):
        M.compute_metrics(["a"], [["a"], ["b"]])


# ---------------------------------------------------------------------------
# Rank classification
# ---------------------------------------------------------------------------


def test_rank_classification_ragged_with_ties():
    scores = [
        np.array([-1.0, -1.0, -2.0]),  # tie between 0 and 1 -> 0
        np.array([-3.0, -0.5]),  # -> 1
        np.array([-2.0, -2.0, -1.0, -1.0]),  # tie between 2 and 3 -> 2
    ]
    np.testing.assert_array_equal(M.argmax_options(scores), [0, 1, 2])
    # labels [0, 0, 2]: correct, wrong, correct -> 2/3 -> 66.666...
    assert M.rank_classification_accuracy(scores, [0, 0, 2]) == pytest.approx(
        200 / 3
    )


def test_rank_classification_2d_with_neg_inf_padding():
    scores = np.array([[-1.0, -np.inf], [-5.0, -4.0]])
    assert M.rank_classification_accuracy(scores, [0, 1]) == 100.0


def test_rank_classification_nan_rejected():
    with pytest.raises(ValueError):
        M.argmax_options([[0.0, float("nan")]])


def test_group_option_scores_ties_and_padding():
    # (example, option, score, padding)
    rows = [
        (0, 0, -1.0, False),
        (0, 1, -0.5, False),  # example 0 -> option 1
        (1, 1, -2.0, False),  # listed before option 0 ...
        (1, 0, -2.0, False),  # ... but the tie goes to option 0
        (1, 2, 0.0, True),  # padding with the best score: ignored
        (0, 2, 5.0, True),  # padding with the best score: ignored
        (2, 0, -1.0, False),  # example 2 -> option 0
        (7, 7, 9.0, True),  # padding with junk indices: ignored
    ]
    ex, opt, sc, pad = map(np.array, zip(*rows))
    preds = M.group_option_scores(ex, opt, sc, is_padding=pad)
    np.testing.assert_array_equal(preds, [1, 0, 0])
    # labels [1, 0, 1]: correct, correct, wrong -> 66.666...
    acc = M.rank_classification_accuracy_flat(ex, opt, sc, [1, 0, 1], is_padding=pad)
    assert acc == pytest.approx(200 / 3)


def test_group_option_scores_missing_example_counts_as_wrong():
    # Example 1 only has a padding row -> prediction -1 -> wrong.
    ex, opt, sc = [0, 0, 1], [0, 1, 0], [0.0, -1.0, 3.0]
    pad = [False, False, True]
    np.testing.assert_array_equal(
        M.group_option_scores(ex, opt, sc, pad, num_examples=2), [0, -1]
    )
    assert M.rank_classification_accuracy_flat(ex, opt, sc, [0, 0], pad) == 50.0


def test_group_option_scores_duplicates_rejected():
    with pytest.raises(ValueError):
        M.group_option_scores([0, 0], [1, 1], [0.0, 1.0])


# ---------------------------------------------------------------------------
# MetaICL accuracy / macro-F1
# ---------------------------------------------------------------------------


def test_macro_f1_three_classes_hand_worked():
    gold = ["A", "A", "A", "B", "B", "C"]
    pred = ["A", "A", "B", "B", "C", "A"]
    # A: gold idx 0,1,2 -> correct 0,1 -> R = 2/3
    #    pred idx 0,1,5 -> correct 0,1 -> P = 2/3 -> F1 = 2/3
    # B: gold idx 3,4   -> correct 3   -> R = 1/2
    #    pred idx 2,3   -> correct 3   -> P = 1/2 -> F1 = 1/2
    # C: gold idx 5     -> wrong       -> R = 0
    #    pred idx 4     -> wrong       -> P = 0   -> F1 = 0 (P+R = 0)
    # macro = (2/3 + 1/2 + 0)/3 = 7/18 -> 38.888...
    assert M.macro_f1(pred, gold) == pytest.approx(100 * 7 / 18)
    # accuracy = correct at idx 0,1,3 -> 3/6 -> 50
    assert M.accuracy(pred, gold) == 50.0
    assert M.metaicl_metrics(pred, gold, is_classification=True) == pytest.approx(
        {"accuracy": 50.0, "macro_f1": 100 * 7 / 18}
    )


def test_macro_f1_metaicl_quirks():
    gold = ["A", "A", "B"]
    pred = [" A ", "C", "A"]  # whitespace is stripped, as in MetaICL
    # A: R = 1/2 (idx 0 ok, idx 1 wrong); P over preds idx 0,2 = 1/2 -> F1 1/2
    # B: never predicted -> P = 1.0, R = 0 -> F1 = 2*1*0/1 = 0
    # C: predicted but never gold -> not averaged.
    # macro = (1/2 + 0)/2 = 25.  (sklearn over {A,B,C} would give 16.67.)
    assert M.macro_f1(pred, gold) == pytest.approx(25.0)


def test_accuracy_generation_lists_and_normalisation():
    preds = ["Paris", "the Eiffel Tower.", "rome"]
    golds = [["paris", "Paris"], "The Eiffel Tower", "Rome"]
    # MetaICL: strip only, case-sensitive: correct, wrong, wrong -> 33.33...
    assert M.accuracy(preds, golds) == pytest.approx(100 / 3)
    # With S-NI normalisation all three match -> 100.
    assert M.accuracy(preds, golds, normalize=True) == 100.0
    assert M.metaicl_metrics(preds, golds, is_classification=False) == pytest.approx(
        {"accuracy": 100 / 3}
    )


# ---------------------------------------------------------------------------
# MetaICL scored on generations (HyperTuning §5.2)
# ---------------------------------------------------------------------------


def _metaicl_reference(predictions, groundtruths):
    """MetaICL's macro-F1 (facebookresearch/MetaICL, metaicl/data.py
    MetaICLData.evaluate, is_classification=True), re-derived from counts:
    for each label that occurs among the (stripped) gold labels, precision =
    hits / times predicted (1.0 if never predicted), recall = hits / times
    gold, F1 = 2PR/(P+R) (0 if P+R = 0); the mean over those labels."""
    preds = [p.strip() for p in predictions]
    golds = [g.strip() for g in groundtruths]
    f1s = []
    for label in dict.fromkeys(golds):
        hits = sum(p == g == label for p, g in zip(preds, golds))
        predicted = preds.count(label)
        precision = hits / predicted if predicted else 1.0
        recall = hits / golds.count(label)
        total = precision + recall
        f1s.append(0.0 if total == 0 else 2 * precision * recall / total)
    return 100.0 * sum(f1s) / len(f1s)


def test_generation_macro_f1_hand_worked_with_off_label_generations():
    preds = [" positive", "negative ", "positive!", "neutral", "negative", "positive"]
    gold = ["positive", "negative", "positive", "negative", "positive", "negative"]
    # Stripped: correct at 0, 1 only. 'positive!' and 'neutral' match no label:
    # they only cost recall. positive: predicted at 0, 5 -> P = 1/2; gold at
    # 0, 2, 4 -> R = 1/3 -> F1 = (1/3) / (5/6) = 0.4. negative: predicted at
    # 1, 4 -> P = 1/2; gold at 1, 3, 5 -> R = 1/3 -> F1 = 0.4. Macro = 40.
    out = M.metaicl_generation_metrics(preds, gold, is_classification=True)
    assert out == {"macro_f1": pytest.approx(40.0)}
    assert _metaicl_reference(preds, gold) == pytest.approx(40.0)


def test_generation_macro_f1_never_predicted_label():
    # a: P = 2/3, R = 1 -> F1 = 0.8; b: never predicted -> P = 1, R = 0 -> 0.
    out = M.metaicl_generation_metrics(["a", "a", "a"], ["a", "a", "b"], True)
    assert out["macro_f1"] == pytest.approx(40.0)


def test_generation_macro_f1_agrees_with_metaicl_reference_on_random_cases():
    rng = np.random.default_rng(0)
    labels = ["yes", "no", "maybe", " yes", "Yes", "n/a"]
    for _ in range(200):
        n = int(rng.integers(1, 12))
        gold = [labels[i] for i in rng.integers(0, 3, n)]
        pred = [labels[i] for i in rng.integers(0, len(labels), n)]
        got = M.metaicl_generation_metrics(pred, gold, True)["macro_f1"]
        assert got == pytest.approx(_metaicl_reference(pred, gold))


def test_generation_rouge_l_for_non_classification_tasks():
    preds = ["the cat sat", "dogs"]
    golds = ["the cat sat on the mat", ["a dog", "cats"]]
    # 1: LCS 3 of 3 predicted / 6 reference tokens -> P 1, R 1/2 -> F 2/3.
    # 2: stemmed 'dog' vs 'a dog' -> P 1, R 1/2 -> F 2/3 (vs 'cat': 0); max.
    out = M.metaicl_generation_metrics(preds, golds, is_classification=False)
    assert out == {"rougeL": pytest.approx(100 * 2 / 3)}
    with pytest.raises(ValueError):
        M.metaicl_generation_metrics(["x"], [], is_classification=False)


def test_evaluate_headline_prefers_the_generation_metric():
    from hyperflax.evaluate import headline
    metaicl = {"rank_accuracy": 90.0, "rank_macro_f1": 80.0, "generated_macro_f1": 12.5,
               "chance": 50.0}
    assert headline(metaicl) == 12.5
    assert headline({"rank_accuracy": 90.0, "generated_rougeL": 33.0}) == 33.0
    p3 = {"accuracy": 61.0, "generated_exact_match": 5.0, "chance": 33.3}
    assert headline(p3) == 61.0
    assert headline({"rougeL": 44.0, "exact_match": 20.0}) == 44.0


# ---------------------------------------------------------------------------
# format_table
# ---------------------------------------------------------------------------


def test_format_table():
    rows = {
        "T5-LM": {"t1": 50.0, "t2": 70.4, "extra": 1.0},
        "HyperT5": {"t1": 60.0, "t2": math.nan},
    }
    # T5-LM AVG = (50 + 70.4)/2 = 60.2; HyperT5 has a NaN -> "-".
    expected = (
        "| Model   |   t1 |   t2 |  AVG |\n"
        "|:--------|-----:|-----:|-----:|\n"
        "| T5-LM   | 50.0 | 70.4 | 60.2 |\n"
        "| HyperT5 | 60.0 |    - |    - |"
    )
    assert M.format_table(rows, ["t1", "t2"]) == expected


def test_format_table_rejects_avg_column():
    with pytest.raises(ValueError):
        M.format_table({}, ["AVG"])
