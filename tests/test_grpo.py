"""train-summarizer: GRPO of the keyword policy with tiny models (text and VLM with real images),
its config reaching TRL, held-out items kept out of training, resume after a kill, and a
known-answer run where the reward must go up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from mmsrarec.config import load_config
from mmsrarec.stages import Runner
from mmsrarec.summarize import train_stage
from mmsrarec.summarize.config import SummarizeConfig, SummarizerTrainConfig
from mmsrarec.summarize.grpo import ITEM_INDEX, held_out, prompt_rows, split_items, train_dataset

from conftest import write_atomic


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    from mmsrarec.models.tiny import tiny_causal_lm
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "lm")


def grpo_overrides(policy: Path, reference: Path, **train) -> list[str]:
    """Tiny budget: 2 prompts x 2 completions of 8 tokens per step."""
    values = {"reference.name_or_path": str(reference), "max_steps": 4, "save_steps": 2, "prompts_per_step": 2,
              "num_generations": 2, "max_completion_length": 8, "max_eval_items": 4, **train}
    return [f"summarize.model.name_or_path={policy}", "summarize.max_new_tokens=8", "summarize.batch_size=8",
            "train_summarizer.embedder.device=cpu",
            *[f"train_summarizer.{k}={v}" for k, v in values.items()]]


def items_table(n: int) -> pd.DataFrame:
    return pd.DataFrame({"item": np.arange(1, n + 1), "item_id": [f"i{k}" for k in range(n)],
                         "title": [f"Item {k}" for k in range(n)], "text": [f"movie {k}; class: drama" for k in range(n)],
                         "image": [""] * n})


# ----------------------------------------------------------------------------- no model needed

def test_held_out_split_is_seeded_stable_and_disjoint():
    items = items_table(400)
    cfg = SummarizerTrainConfig(held_out_fraction=0.2, max_train_items=100)
    train, test = split_items(items, cfg, seed=7)
    assert set(train["item_id"]).isdisjoint(test["item_id"])
    assert len(train) == 100 and 50 < len(test) < 110  # ~80 of 400
    # The same items are held out whatever the order of the table and the training cap.
    _, test_shuffled = split_items(items.sample(frac=1, random_state=1), SummarizerTrainConfig(held_out_fraction=0.2), 7)
    assert set(test_shuffled["item_id"]) == set(test["item_id"])
    _, other_seed = split_items(items, cfg, seed=8)
    assert set(other_seed["item_id"]) != set(test["item_id"])
    # item_index points at the item's row in the full table (the discriminability reward's target).
    assert (items["item_id"].to_numpy()[test[ITEM_INDEX]] == test["item_id"].to_numpy()).all()


def test_training_prompts_are_the_summarize_prompts(tiny_lm):
    from mmsrarec.models import ModelConfig, load_causal_lm
    from mmsrarec.summarize.generate import text_prompts

    _, tokenizer = load_causal_lm(ModelConfig(name_or_path=str(tiny_lm), device="cpu"))
    items = items_table(6).assign(**{ITEM_INDEX: range(6)})
    cfg = SummarizeConfig(max_text_tokens=3)
    rows = prompt_rows(items, cfg, tokenizer, with_images=False)
    assert rows["prompt"].tolist() == text_prompts(cfg, tokenizer, items)
    data = train_dataset(rows)
    assert data[0]["prompt"] == [{"role": "user", "content": rows["prompt"].iloc[0]}]
    assert data[0]["item_text"] == "movie 0; class: drama"  # the reward sees the whole text, not the cut one


def test_reward_weights_and_normalisation_reach_trl(tmp_path):
    import torch

    from mmsrarec.summarize.grpo import trl_config

    cfg = SummarizerTrainConfig(information_weight=2.0, reconstruction_weight=0.0, length_weight=0.25,
                                discriminability_weight=0.5, length_reward="length", normalize_rewards=True,
                                num_generations=3, prompts_per_step=5, beta=0.04, temperature=0.7)
    args = trl_config(cfg, tmp_path, seed=1, device=torch.device("cpu"))
    # reconstruction has weight 0, so it is not a training reward at all
    assert args.reward_weights == [0.25, 2.0, 0.5]
    assert args.multi_objective_aggregation == "normalize_then_sum"
    assert args.per_device_train_batch_size == 15 and args.num_generations == 3
    assert (args.beta, args.temperature, args.use_cpu, args.bf16) == (0.04, 0.7, True, False)
    plain = trl_config(SummarizerTrainConfig(), tmp_path, seed=1, device=torch.device("cpu"))
    assert plain.multi_objective_aggregation == "sum_then_normalize"
    assert plain.reward_weights == [0.5, 1.0, 0.2]  # length_norm, information, reconstruction


def test_the_reconstruction_form_reaches_the_trainer_the_eval_and_the_curves(tmp_path, monkeypatch):
    import math

    import trl

    from mmsrarec.errors import ConfigError
    from mmsrarec.summarize.curves import curve_table
    from mmsrarec.summarize.grpo import RewardModels, make_rewards, make_trainer, score_completions, trained_rewards
    from test_rewards import CharTokenizer, FixedNextToken

    assert SummarizerTrainConfig().reconstruction_reward == "reconstruction"  # -log PPL, as before the key
    assert list(SummarizerTrainConfig().reward_weights()) == ["length_norm", "information", "reconstruction",
                                                              "discriminability"]
    assert SummarizerTrainConfig().reported_rewards() == list(SummarizerTrainConfig().reward_weights())
    with pytest.raises(ConfigError, match=r"train_summarizer\.reconstruction_reward.*'reconstruction_ppl'"):
        load_config(None, ["train_summarizer.reconstruction_reward=ppl"])

    tcfg = load_config(None, ["train_summarizer.reconstruction_reward=reconstruction_ppl",
                              "train_summarizer.information_weight=0", "train_summarizer.length_reward=length",
                              "train_summarizer.length_weight=0.5", "train_summarizer.reconstruction_weight=0.2"]
                       ).train_summarizer
    weights = trained_rewards(tcfg)
    assert weights == {"length": 0.5, "reconstruction_ppl": 0.2}
    assert tcfg.reported_rewards() == ["length", "information", "reconstruction", "reconstruction_ppl",
                                       "discriminability"]
    # p(a, b, c, d) = 1/2, 1/4, 1/8, 1/8: "abc" has mean NLL 2 ln 2, PPL 4 (test_rewards)
    model = FixedNextToken([math.log(p) for p in (0.5, 0.25, 0.125, 0.125)])
    models = RewardModels(tcfg, ["abc"])
    models._reference = (model, CharTokenizer())  # what RewardModels.reference() would load
    rewards = make_rewards(list(weights), models, max_keywords=10)
    captured = {}
    monkeypatch.setattr(trl, "GRPOTrainer", lambda **kwargs: captured.update(kwargs))
    make_trainer(model, CharTokenizer(), None, rewards, tcfg, tmp_path, seed=1)
    funcs, args = captured["reward_funcs"], captured["args"]
    assert [f.__name__ for f in funcs] == ["r_len", "r_recon"] and args.reward_weights == [0.5, 0.2]
    assert funcs[1](None, ["x, y"], item_text=["abc"]) == pytest.approx([-4.0])  # -PPL, not -log PPL

    # the evaluation: both reconstruction forms reported, the combined reward over the trained ones
    both = make_rewards(["length", "reconstruction", "reconstruction_ppl"], models, max_keywords=10)
    rows = pd.DataFrame({"prompt": ["p"], "item_text": ["abc"], ITEM_INDEX: [0]})
    scores = score_completions(rows, ["x, y"], both, weights, max_keywords=10)
    assert scores["rewards"] == pytest.approx({"length": -2.0, "reconstruction": -2 * math.log(2),
                                               "reconstruction_ppl": -4.0})
    assert scores["combined"] == pytest.approx(0.5 * -2.0 + 0.2 * -4.0)
    # the curves: TRL logs rewards/<function name>/mean; each form gets its own column
    names = {rewards[n].__name__: n for n in weights}
    table = curve_table([{"step": 1, "reward": -1.8, "rewards/r_len/mean": -2.0, "rewards/r_recon/mean": -4.0}], names)
    assert table[["length", "reconstruction_ppl"]].iloc[0].tolist() == [-2.0, -4.0]


# ----------------------------------------------------------------------------- training runs

class KilledAtStep(Exception):
    pass


def test_train_summarizer_resumes_after_a_kill_then_summarize_tuned_uses_it(
        toy_overrides, tiny_lm, monkeypatch, capsys):
    over = [*toy_overrides, *grpo_overrides(tiny_lm, tiny_lm)]
    real_callback = train_stage.curves_callback

    def killing_callback(names, out):
        callback = real_callback(names, out)

        def on_step_end(args, state, control, **kwargs):
            if state.global_step == 3:
                raise KilledAtStep  # after step 3, before it is logged; checkpoint-2 is on disk
        callback.on_step_end = on_step_end
        return callback

    monkeypatch.setattr(train_stage, "curves_callback", killing_callback)
    runner = Runner(load_config(None, over))
    with pytest.raises(KilledAtStep):
        runner.run("train-summarizer")
    partial = runner.run_dir / "train-summarizer.partial"
    assert (partial / "checkpoints" / "checkpoint-2").is_dir()
    assert pd.read_csv(partial / "reward_curves.csv")["step"].tolist() == [1, 2]

    monkeypatch.setattr(train_stage, "curves_callback", real_callback)
    Runner(load_config(None, over)).run("train-summarizer")
    assert "resuming from" in capsys.readouterr().err
    out = runner.run_dir / "train-summarizer"
    curves = pd.read_csv(out / "reward_curves.csv")
    assert curves["step"].tolist() == [1, 2, 3, 4]  # every step once, across the kill
    assert {"combined", "information", "reconstruction", "length_norm"} <= set(curves.columns)
    assert curves[["combined", "information", "reconstruction", "length_norm"]].notna().all().all()
    assert (out / "reward_curves.png").stat().st_size > 1000
    assert (out / "adapter" / "adapter_config.json").is_file() and not (out / "checkpoints").exists()

    report = json.loads((out / "eval.json").read_text())
    for policy in ("zero_shot", "tuned"):
        assert set(report[policy]["rewards"]) == {"length_norm", "information", "reconstruction", "discriminability"}
        expected = sum(w * report[policy]["rewards"][k] for k, w in report["weights"].items())
        assert report[policy]["combined"] == pytest.approx(expected)
    split = pd.read_parquet(out / "split.parquet")
    held = split.loc[split["split"] == "held_out", "item"]
    assert {e["item"] for e in report["tuned"]["examples"]} <= set(held)

    Runner(load_config(None, over)).run("summarize-tuned")
    table = pd.read_parquet(runner.run_dir / "summarize-tuned" / "keywords.parquet")
    items = pd.read_parquet(runner.run_dir / "prepare" / "items.parquet")
    assert table["item"].tolist() == items["item"].tolist()


def test_the_papers_reconstruction_form_trains_and_both_forms_are_reported(toy_overrides, tiny_lm):
    over = [*toy_overrides, *grpo_overrides(tiny_lm, tiny_lm, max_steps=1, reconstruction_reward="reconstruction_ppl")]
    runner = Runner(load_config(None, over))
    runner.run("train-summarizer")
    out = runner.run_dir / "train-summarizer"
    curves = pd.read_csv(out / "reward_curves.csv")
    assert "reconstruction_ppl" in curves and "reconstruction" not in curves  # only the trained form
    assert (curves["reconstruction_ppl"] <= -1).all()  # -PPL, and PPL >= 1
    report = json.loads((out / "eval.json").read_text())
    assert report["weights"] == {"length_norm": 0.5, "information": 1.0, "reconstruction_ppl": 0.2}
    for policy in ("zero_shot", "tuned"):
        rewards = report[policy]["rewards"]
        assert set(rewards) == {"length_norm", "information", "reconstruction", "reconstruction_ppl",
                                "discriminability"}
        assert rewards["reconstruction_ppl"] <= -np.exp(-rewards["reconstruction"]) + 1e-6  # mean exp >= exp mean


def test_held_out_items_never_reach_the_trainer(toy_overrides, tiny_lm, monkeypatch):
    seen: list[int] = []
    real_make_trainer = train_stage.make_trainer

    def recording(model, processor, dataset, *args, **kwargs):
        seen.extend(dataset["item"])
        return real_make_trainer(model, processor, dataset, *args, **kwargs)

    monkeypatch.setattr(train_stage, "make_trainer", recording)
    over = [*toy_overrides, *grpo_overrides(tiny_lm, tiny_lm, max_steps=1, max_eval_items=0,
                                            held_out_fraction=0.3)]
    runner = Runner(load_config(None, over))
    runner.run("train-summarizer")
    items = pd.read_parquet(runner.run_dir / "prepare" / "items.parquet")
    held = set(items.loc[held_out(items["item_id"], 0.3, seed=runner.cfg.seed), "item"])
    assert held and seen and held.isdisjoint(seen)
    split = pd.read_parquet(runner.run_dir / "train-summarizer" / "split.parquet")
    assert set(split.loc[split["split"] == "train", "item"]) == set(seen)


def test_known_answer_the_length_reward_goes_up(toy_overrides, tiny_lm):
    """Only R_len = -|W| (raw), full fine-tuning with a large step: the tiny model starts at about
    one keyword per answer and must learn answers that parse to fewer (0 is the maximum)."""
    over = [*toy_overrides, *grpo_overrides(
        tiny_lm, tiny_lm, max_steps=16, save_steps=100, prompts_per_step=4, num_generations=4, lora="false",
        learning_rate=0.1, information_weight=0, reconstruction_weight=0, length_weight=1, length_reward="length",
        max_eval_items=0)]
    runner = Runner(load_config(None, over))
    runner.run("train-summarizer")
    curve = pd.read_csv(runner.run_dir / "train-summarizer" / "reward_curves.csv")["length"]
    assert len(curve) == 16
    assert curve.tail(4).mean() > curve.head(3).mean() + 0.4, curve.tolist()
    assert (runner.run_dir / "train-summarizer" / "model" / "config.json").is_file()  # full fine-tuning
    Runner(load_config(None, over)).run("summarize-tuned")  # loads the fine-tuned weights, not an adapter


def picture(i: int, size: tuple[int, int]) -> Image.Image:
    """A small photo-like picture: a colour gradient with a few shapes, different per item."""
    w, h = size
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    base = np.array([(37 * i) % 256, (91 * i) % 256, (151 * i) % 256])[None, None, :]
    pixels = (base * (1 - 0.5 * x) + 120 * y * np.array([1.0, 0.6, 0.2])).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(img)
    draw.ellipse([w // 5, h // 5, w // 5 + 10 + i, h // 5 + 12], fill=(255, 255 - 9 * i, 0))
    draw.rectangle([w // 2, h // 2, w - 4, h - 4], outline=(0, 0, 0), width=2)
    draw.line([0, h - 1 - i, w - 1, i], fill=(250, 250, 250), width=1)
    return img


def test_vlm_grpo_trains_on_text_and_image_prompts(tmp_path, tiny_lm, monkeypatch):
    from mmsrarec.models.tiny import tiny_qwen2_vl

    folder = write_atomic(tmp_path / "img", name="img", n_users=10, n_items=24, length=6)
    (folder / "pics").mkdir()
    rows = ["item_id:token\ttitle:token_seq\tgenre:token_seq\timage:token"]
    for i in range(24):
        path = ""
        if i % 3:
            picture(i, (60 + 2 * i, 50 + i)).save(folder / "pics" / f"{i}.jpg", quality=90)
            path = f"pics/{i}.jpg"
        rows.append(f"i{i}\tItem {i}\tgenre{i % 3}\t{path}")
    (folder / "img.item").write_text("\n".join(rows) + "\n")
    vlm = tiny_qwen2_vl(tmp_path / "vlm")

    vision_calls = {"train": 0, "eval": 0}
    real_make_trainer = train_stage.make_trainer

    def watching(model, *args, **kwargs):
        trainer = real_make_trainer(model, *args, **kwargs)
        visual = next(m for name, m in trainer.model.named_modules() if name.endswith("visual"))
        visual.register_forward_hook(
            lambda mod, inp, out: vision_calls.__setitem__("train" if mod.training else "eval",
                                                           vision_calls["train" if mod.training else "eval"] + 1))
        return trainer

    monkeypatch.setattr(train_stage, "make_trainer", watching)
    over = [f"runs_dir={tmp_path / 'runs'}", "name=v", "data.source=atomic", f"data.path={folder}", "data.name=img",
            "data.num_negatives=3", "summarize.model.kind=vlm",
            *grpo_overrides(vlm, tiny_lm, max_steps=3, prompts_per_step=4, held_out_fraction=0.25)]
    runner = Runner(load_config(None, over))
    runner.run("train-summarizer")
    out = runner.run_dir / "train-summarizer"
    assert vision_calls["train"] >= 3  # the pictures reached the policy's forward passes while training
    assert pd.read_csv(out / "reward_curves.csv")["step"].tolist() == [1, 2, 3]
    assert (out / "adapter" / "adapter_config.json").is_file()
    report = json.loads((out / "eval.json").read_text())
    kinds = {e["kind"] for e in report["tuned"]["examples"]}
    assert report["prompts"] > report["held_out_items"] or "image" in kinds  # image prompts were scored too
    Runner(load_config(None, over)).run("summarize-tuned")
    table = pd.read_parquet(runner.run_dir / "summarize-tuned" / "keywords.parquet")
    assert (table["raw_image"] != "").sum() >= 5
