"""The verdict (evaluate/verdict.py): where an LLM method stands against the best CF model and the text
baseline, over all cases and by popularity slice, from per-case values."""

import numpy as np

from mmsrarec.evaluate.verdict import MIN_CASES, standing, verdict_lines


def draws(label):
    return np.random.default_rng([1, 1013] if label is None else [1, 1013, 0, int(label.split("-")[0].rstrip("+"))])


def values(ndcg, hr=None):
    ndcg = np.asarray(ndcg, float)
    return {"ndcg@5": ndcg, "hr@5": np.asarray(hr if hr is not None else (ndcg > 0), float),
            "users": np.arange(len(ndcg))}


def per_of(llm, cf, text, split="test"):
    return {("mmsrarec", "sampled"): {split: values(llm)}, ("sasrec", "sampled"): {split: values(cf)},
            ("text", "sampled"): {split: values(text)}}


def slices(labels):
    labels = np.asarray(labels, dtype=object)
    return {"test": lambda users: labels[users]}


def test_standing_reads_the_interval():
    assert standing([0.1, 0.02, 0.2]) == "ahead of"
    assert standing([-0.1, -0.2, -0.01]) == "behind"
    assert standing([0.05, -0.01, 0.1]) == "level with"


def test_the_llm_is_ahead_on_cold_targets_and_behind_on_popular_ones():
    # 12 cold cases: the LLM finds every target at rank 1 (NDCG 1), SASRec none, text half;
    # 12 popular cases: SASRec finds every one, the LLM none, text the same as the LLM
    llm = [1.0] * 12 + [0.0] * 12
    cf = [0.0] * 12 + [1.0] * 12
    text = [1.0, 0.0] * 6 + [0.0] * 12
    lines = verdict_lines(per_of(llm, cf, text), ["mmsrarec"], "sasrec", "text",
                          slices(["0"] * 12 + ["100+"] * 12), "loo", draws)
    body = "\n".join(lines)
    all_line = next(line for line in lines if line.startswith("- all cases (24 cases)"))
    assert "NDCG@5 0.500 (HR@5 0.500)" in all_line
    assert "level with sasrec (0.500): +0.000" in all_line  # 12 wins, 12 losses
    cold = next(line for line in lines if line.startswith("- popularity 0 (12 cases)"))
    assert "ahead of sasrec (0.000): +1.000 [+1.000, +1.000]" in cold
    assert "ahead of text (0.500): +0.500" in cold
    popular = next(line for line in lines if line.startswith("- popularity 100+ (12 cases)"))
    assert "behind sasrec (1.000): -1.000 [-1.000, -1.000]" in popular
    assert "level with text (0.000): +0.000 [+0.000, +0.000]" in popular
    assert "## mmsrarec, test" in body and "GRPO" not in body


def test_small_slices_are_left_out_and_a_single_slice_is_not_repeated():
    n = MIN_CASES + 2
    lines = verdict_lines(per_of([1.0] * n, [0.0] * n, [0.0] * n), ["mmsrarec"], "sasrec", "text",
                          slices(["100+"] * n), "loo", draws)
    assert sum(line.startswith("- ") for line in lines) == 1  # all cases; the one slice says nothing more
    lines = verdict_lines(per_of([1.0] * n, [0.0] * n, [0.0] * n), ["mmsrarec"], "sasrec", "text",
                          slices(["0"] * (MIN_CASES - 1) + ["100+"] * 3), "loo", draws)
    assert not any(line.startswith("- popularity 0") for line in lines)  # 9 cases: left out


def test_cold_split_words_other_cases_and_the_grpo_line():
    per = per_of([1.0] * 12, [0.0] * 12, [0.0] * 12)
    per[("mmsrarec", "sampled")]["valid"] = values([0.0] * 12)
    per[("sasrec", "sampled")]["valid"] = values([1.0] * 12)
    groups = {"test": lambda u: np.array(["0"] * len(u), object), "valid": lambda u: np.array(["100+"] * len(u), object)}
    grpo = {"held_out_items": 25, "zero_shot": {"combined": 0.2484}, "tuned": {"combined": 0.2119}}
    lines = verdict_lines(per, ["mmsrarec"], "sasrec", "text", groups, "cold", draws, grpo=grpo)
    body = "\n".join(lines)
    assert "test, items never in training (every CF model is at chance here)" in body
    assert "valid, warm leave-one-out cases" in body and "behind sasrec (1.000)" in body
    assert "tuning lowered the combined reward: 0.2484 zero-shot -> 0.2119 tuned (-0.0365)" in body


def test_methods_on_other_cases_are_not_compared():
    per = per_of([1.0] * 12, [0.0] * 12, [0.0] * 12)
    per[("sasrec", "sampled")]["test"]["users"] = np.arange(12) + 100
    per[("text", "sampled")]["test"]["users"] = np.arange(12) + 100
    lines = verdict_lines(per, ["mmsrarec"], "sasrec", "text", slices(["0"] * 12), "loo", draws)
    assert any("nothing to compare" in line for line in lines)


def test_without_k_5_it_compares_at_the_smallest_k_and_lists_slices_in_bucket_order():
    per = per_of([1.0] * 24, [0.0] * 24, [0.0] * 24)
    for method in per.values():
        method["test"]["ndcg@10"], method["test"]["hr@10"] = method["test"].pop("ndcg@5"), method["test"].pop("hr@5")
    lines = verdict_lines(per, ["mmsrarec"], "sasrec", "text", slices(["100+"] * 12 + ["0"] * 12), "loo", draws)
    bullets = [line for line in lines if line.startswith("- ")]
    assert bullets[0].startswith("- all cases (24 cases): NDCG@10 1.000 (HR@10 1.000)")
    assert bullets[1].startswith("- popularity 0 ") and bullets[2].startswith("- popularity 100+ ")


def test_the_all_cases_interval_is_the_leaderboards():
    """The verdict draws as add_intervals does ([seed, 1013]): the same comparison, the same interval."""
    from mmsrarec.evaluate.intervals import paired_bootstrap

    rng = np.random.default_rng(5)
    llm, cf = rng.random(30), rng.random(30)
    lines = verdict_lines(per_of(llm, cf, cf), ["mmsrarec"], "sasrec", None, slices(["0"] * 30), "loo", draws)
    board = paired_bootstrap({"hr@5": llm > 0, "ndcg@5": llm, "gauc": llm}, {"hr@5": cf > 0, "ndcg@5": cf, "gauc": cf},
                             np.random.default_rng([1, 1013]))["ndcg@5"]
    assert f"{board[0]:+.3f} [{board[1]:+.3f}, {board[2]:+.3f}]" in next(line for line in lines if "all cases" in line)
