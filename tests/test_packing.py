"""Shared-prefix SFT (sft.pack, llm/packing.py): a packed row's per-example losses and LoRA gradients equal
the unpacked examples', on a tiny model and on SmolLM2-135M in float32, under both attention kernels; the
trainer's packed step equals its unpacked step; the mask and positions by hand."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from mmsrarec.llm.packing import PAD, block_mask, case_groups, pack_case, pack_dataset, positions, rows_per_batch
from mmsrarec.models import ModelConfig, load_causal_lm
from mmsrarec.rank.config import LoraSettings, RankConfig, SFTSettings
from mmsrarec.rank.prompts import Catalog
from mmsrarec.rank.tasks import build_examples

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from mmsrarec.models.tiny import tiny_causal_lm
    return tiny_causal_lm(tmp_path_factory.mktemp("packing") / "lm")


def _data(n_items: int = 30):
    items = pd.DataFrame({"item": range(1, n_items + 1), "title": [f"Item {i}" for i in range(1, n_items + 1)],
                          "text": ["" for _ in range(n_items)], "image": ["" for _ in range(n_items)]})
    pool = ["red apple", "blue kettle", "tea", "toy", "puzzle", "racing game", "comedy", "stroller"]
    keywords = {i: [pool[(i + j) % len(pool)] for j in range(1 + i % 5)] for i in range(1, n_items + 1)}
    train = pd.DataFrame({"user": np.arange(12), "items": [list(range(1 + u, 9 + u)) for u in range(12)]})
    return {"train": train}, Catalog.build(items, keywords, use_keywords=True)


def _cfg(model, neg_per_pos: int = 3, **sft) -> RankConfig:
    base = dict(batch_size=64, grad_accum=1, lr=1e-3, save_steps=100, warmup_ratio=0.0, max_steps=1)
    return RankConfig(model=ModelConfig(name_or_path=str(model), device="cpu"), max_examples=24,
                      neg_per_pos=neg_per_pos, examples_per_user=1,
                      lora=LoraSettings(r=4, alpha=8, dropout=0.0), sft=SFTSettings(**{**base, **sft}))


def _prepared(model_dir, cfg, tmp_path, loss="token"):
    """(the PEFT model with random B matrices, TRL's tokenized examples, the trainer) for cfg's examples."""
    from peft import LoraConfig
    from trl import SFTConfig

    from mmsrarec.llm.train import trainer_class

    data, catalog = _data()
    examples = build_examples(data, catalog, cfg, seed=0)
    model, tok = load_causal_lm(cfg.model)
    model.float()
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, completion_only_loss=True, report_to="none",
                     remove_unused_columns=False, per_device_train_batch_size=64)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False,
                      task_type="CAUSAL_LM")
    torch.manual_seed(1)
    trainer = trainer_class(loss, packed=False)(model=model, args=args, train_dataset=examples,
                                                processing_class=tok, peft_config=lora)
    return trainer.model, trainer.train_dataset, tok


def _nll_per_example(model, batch, attn="sdpa", position_ids=None):
    """Each example's mean answer NLL from one collated batch, keyed by (row, segment): a packed batch
    (segments) runs under its block mask (and position_ids when given), an unpacked one as collated."""
    from mmsrarec.llm.packing import model_mask

    inputs = {k: v for k, v in batch.items() if k not in ("labels", "segments", "images_per_row")}
    if "segments" in batch:
        inputs["attention_mask"] = model_mask(block_mask(batch["segments"]), attn, torch.float32)
    if position_ids is not None:
        inputs["position_ids"] = position_ids
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    segments = batch["segments"][:, 1:] if "segments" in batch else torch.zeros_like(labels)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    return [nll[r][(labels[r] != -100) & (segments[r] == s)].mean() for r in range(len(labels))
            for s in sorted(set(segments[r][labels[r] != -100].tolist()))]


def _losses_and_grads(model, batches, **kwargs):
    """(every example's loss in `batches`, the gradient of their sum over the trainable parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    losses = [loss for b in batches for loss in _nll_per_example(model, b, **kwargs)]
    torch.stack(losses).sum().backward()
    return torch.stack(losses).detach(), torch.cat([p.grad.flatten() for p in params])


def _compare(model, prepared, tok, attn):
    """Packed vs unpacked: per-example losses, and the LoRA gradients of their sum."""
    from mmsrarec.llm.packing import PackedCollator

    model.base_model.model.config._attn_implementation = attn
    packed = pack_dataset(prepared)
    collate = PackedCollator(tok.pad_token_id)
    assert len(packed) < len(prepared) and max(packed["examples"]) > 1
    order = [i for members in case_groups(prepared) for i in members]  # the rows as packing lays them out
    alone = [collate([{"input_ids": prepared[i]["input_ids"], "labels": prepared[i]["labels"],
                       "segments": [0] * len(prepared[i]["input_ids"])}]) for i in order]
    want_loss, want_grad = _losses_and_grads(model, alone, attn=attn)
    # one padded batch of packs
    got_loss, got_grad = _losses_and_grads(model, [collate([packed[i] for i in range(len(packed))])], attn=attn)
    assert len(got_loss) == len(want_loss) == len(prepared)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-4, atol=1e-5)
    assert float((got_grad - want_grad).norm() / want_grad.norm()) < 1e-4
    packed_tokens = sum(len(r) for r in packed["input_ids"])
    return packed_tokens, sum(len(r) for r in prepared["input_ids"])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_losses_and_lora_gradients_equal_unpacked_on_a_tiny_model(tiny_lm, tmp_path, attn):
    model, prepared, tok = _prepared(tiny_lm, _cfg(tiny_lm), tmp_path)
    with torch.no_grad():  # far from uniform, so a wrong mask or position shows in the losses
        for p in model.parameters():
            if p.ndim >= 2 and not p.requires_grad:
                p.normal_(0, 0.15)
    packed_tokens, tokens = _compare(model, prepared, tok, attn)
    assert packed_tokens < tokens


def test_packed_losses_and_lora_gradients_equal_unpacked_on_smollm2_in_float32(tmp_path):
    from mmsrarec.models import embedded_smollm2_dir

    cfg = _cfg(embedded_smollm2_dir(), neg_per_pos=2)
    cfg.max_examples = 7  # one case of 3 main examples, and aux examples
    model, prepared, tok = _prepared(embedded_smollm2_dir(), cfg, tmp_path)
    _compare(model, prepared, tok, "sdpa")


def test_pack_case_shares_the_common_prefix_and_never_an_answer():
    ids = [[1, 2, 3, 4, 5, 9], [1, 2, 3, 7, 5, 8], [1, 2, 3, 4, 6, 8]]
    labels = [[-100, -100, -100, -100, -100, 9], [-100] * 5 + [8], [-100] * 5 + [8]]
    row = pack_case(ids, labels)
    assert row["input_ids"] == [1, 2, 3, 4, 5, 9, 7, 5, 8, 4, 6, 8]
    assert row["segments"] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert row["labels"] == [-100, -100, -100, -100, -100, 9, -100, -100, 8, -100, -100, 8]
    # the same examples twice: everything before the answer is common, yet a block starts one token early
    same = pack_case([[1, 2, 3, 9]] * 2, [[-100, -100, -100, 9]] * 2)
    assert same["segments"] == [0, 0, 1, 1, 2, 2] and same["labels"] == [-100, -100, -100, 9, -100, 9]
    with pytest.raises(ValueError):  # nothing shared before an answer
        pack_case([[1, 2], [3, 2]], [[-100, 2], [-100, 2]])


def test_block_mask_and_positions_by_hand():
    segments = torch.tensor([[0, 0, 1, 1, 2, 2, 2], [0, 0, 0, PAD, PAD, PAD, PAD]])
    at, mask = positions(segments), block_mask(segments)
    assert at[0].tolist() == [0, 1, 2, 3, 2, 3, 4]
    assert at[1].tolist() == [0, 1, 2, 0, 0, 0, 0]  # padding at 0
    m = mask[0, 0].int()
    assert m[4].tolist() == [1, 1, 0, 0, 1, 0, 0]  # block 2's first token: the prefix and itself
    assert m[3].tolist() == [1, 1, 1, 1, 0, 0, 0]  # block 1's second token: the prefix and block 1
    assert m[6].tolist() == [1, 1, 0, 0, 1, 1, 1]
    assert mask[1, 0, 2].int().tolist() == [1, 1, 1, 0, 0, 0, 0]  # a lone example: causal
    assert mask[1, 0, 5].int().tolist() == [0, 0, 0, 0, 0, 1, 0]  # padding attends itself alone


def test_a_packed_batch_holds_about_as_many_examples_as_sft_batch_size():
    keys = [(1, 2)] * 4 + [(3, 4)] * 4 + [7, 8]  # 10 examples in 4 rows
    assert rows_per_batch(8, keys) == 3 and rows_per_batch(2, keys) == 1 and rows_per_batch(1, keys) == 1
    assert rows_per_batch(8, list(range(10))) == 8  # nothing to pack: one example a row


@pytest.mark.parametrize("loss", ["token", "example"])
def test_a_packed_training_step_equals_the_unpacked_step(tiny_lm, tmp_path, loss):
    """train_ranker with sft.pack on and off over the same examples in one optimizer step of two
    micro-batches: the same logged loss and gradient norm, and the same adapter after the step; with loss
    'token', both equal what TRL's own SFTTrainer (its loss over every position) logs for that step."""
    from unittest import mock

    import trl
    from safetensors.torch import load_file

    from mmsrarec.llm.train import read_log, train_ranker

    data, catalog = _data()
    results = {}
    for arm in ("unpacked", "packed", "trl") if loss == "token" else ("unpacked", "packed"):
        cfg = _cfg(tiny_lm, batch_size=16, grad_accum=2, loss=loss, pack=arm == "packed")
        examples = build_examples(data, catalog, cfg, seed=0)
        out = tmp_path / f"{loss}-{arm}"
        with mock.patch("mmsrarec.llm.train.trainer_class", lambda loss, packed=False: trl.SFTTrainer) \
                if arm == "trl" else contextlib.nullcontext():
            facts = train_ranker(examples, cfg, out, seed=0, log=lambda m: None)
        assert facts["packed"] is (arm == "packed") and facts["steps"] == 1
        assert facts["rows"] < facts["examples"] if arm == "packed" else facts["rows"] == facts["examples"]
        results[arm] = read_log(out / "train_log.csv")[0], load_file(out / "adapter" / "adapter_model.safetensors")
    log_a, weights_a = results["unpacked"]
    for arm in results.keys() - {"unpacked"}:
        log_b, weights_b = results[arm]
        assert log_b["loss"] == pytest.approx(log_a["loss"], rel=1e-4), arm
        assert log_b["grad_norm"] == pytest.approx(log_a["grad_norm"], rel=1e-4), arm
        for name in weights_a:
            torch.testing.assert_close(weights_b[name], weights_a[name], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- VLMs: the image in the prefix

def _vlm_data(folder):
    from PIL import Image

    data, catalog = _data()
    for item in catalog.titles:
        path = folder / f"{item}.png"
        Image.new("RGB", (56 + 9 * (item % 6), 48 + 4 * (item % 7)), (8 * item, 120, 250 - 7 * item)).save(path)
        catalog.images[item] = str(path)
    return data, catalog


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_packed_vlm_losses_and_gradients_equal_unpacked_with_the_image_in_the_prefix(arch, tmp_path):
    """rank.history_image: every example of a case starts with the same image, so the case packs with one copy
    of it, and each block's mrope positions continue after the prefix's maximum."""
    from peft import LoraConfig
    from trl import SFTConfig

    from mmsrarec.llm.packing import GroupedExamples, PackedVisionCollator, vision_positions
    from mmsrarec.llm.train import trainer_class
    from mmsrarec.models import load_vlm
    from mmsrarec.models import tiny

    path = getattr(tiny, f"tiny_{arch}")(tmp_path / arch)
    data, catalog = _vlm_data(tmp_path)
    cfg = _cfg(path, neg_per_pos=2)
    cfg.model.kind, cfg.history_image, cfg.max_examples = "vlm", True, 12
    examples = build_examples(data, catalog, cfg, seed=0, is_vlm=True)
    model, processor = load_vlm(ModelConfig(name_or_path=str(path), kind="vlm", device="cpu", dtype="float32"))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.15)
    args = SFTConfig(output_dir=str(tmp_path / "out"), use_cpu=True, completion_only_loss=True, report_to="none",
                     remove_unused_columns=False, max_length=None)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False,
                      task_type="CAUSAL_LM")
    torch.manual_seed(1)
    trainer = trainer_class("token", packed=False)(model=model, args=args, train_dataset=examples,
                                                   processing_class=processor, peft_config=lora)
    peft_model, inner = trainer.model, trainer.data_collator
    grouped = GroupedExamples(examples)

    collate = PackedVisionCollator(inner, processor.tokenizer.pad_token_id)
    packed_batch = collate([grouped[i] for i in range(len(grouped))])
    alone = [inner([dict(e)]) for i in range(len(grouped)) for e in grouped[i]]
    want_loss, want_grad = _losses_and_grads(peft_model, alone)
    got_loss, got_grad = _losses_and_grads(peft_model, [packed_batch],
                                           position_ids=vision_positions(peft_model, packed_batch))
    assert int(packed_batch["segments"].max()) >= 3  # a case's 3 main examples share one row
    assert packed_batch["image_grid_thw"].shape[0] < sum(len(b["image_grid_thw"]) for b in alone if "image_grid_thw" in b)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-4, atol=1e-5)
    assert float((got_grad - want_grad).norm() / want_grad.norm()) < 1e-4
    # the test has teeth: 1-D positions restarting at the prefix length are wrong after an image
    with torch.no_grad():
        wrong = torch.stack(_nll_per_example(peft_model, packed_batch, position_ids=packed_batch["position_ids"]))
    assert float((wrong - want_loss).abs().max()) > 1e-3


def test_vlm_ranker_trains_packed_with_the_history_image_and_unpacked_with_candidate_images(tmp_path):
    from mmsrarec.llm.train import read_log, train_ranker
    from mmsrarec.models import tiny

    path = tiny.tiny_qwen2_vl(tmp_path / "vlm")
    data, catalog = _vlm_data(tmp_path)
    for candidate_image in (False, True):
        cfg = _cfg(path, neg_per_pos=2, batch_size=6, grad_accum=1, max_steps=2)
        cfg.model.kind, cfg.history_image, cfg.candidate_image, cfg.max_examples = "vlm", True, candidate_image, 16
        examples = build_examples(data, catalog, cfg, seed=0, is_vlm=True)
        out = tmp_path / f"run-{candidate_image}"
        facts = train_ranker(examples, cfg, out, seed=0, log=lambda m: None)
        assert facts["steps"] == 2 and np.isfinite([r["loss"] for r in read_log(out / "train_log.csv")]).all()
        # one row per case with the history image alone; a row per example when each has its own image
        assert facts["packed"] is not candidate_image and (facts["rows"] < facts["examples"]) is not candidate_image

    from mmsrarec.llm.packing import packs
    from mmsrarec.models import load_vlm

    llava = load_vlm(ModelConfig(name_or_path=str(tiny.tiny_llava(tmp_path / "llava")), kind="vlm", device="cpu"))[0]
    assert not packs(llava, True)  # its image tokens are not placed by get_rope_index: it trains unpacked


def test_paired_scores_pairs_the_same_lists_and_refuses_others(tmp_path, monkeypatch, capsys):
    from conftest import load_script

    script = load_script("experiments/paired_scores.py")
    lists = [np.arange(5) + i for i in range(4)]

    def write(name, greater, candidates=lists):
        path = tmp_path / f"{name}.parquet"
        pd.DataFrame({"greater": greater, "ties": [0] * 4, "n": [4] * 4, "candidates": candidates}).to_parquet(path)
        return str(path)

    a, b = write("a", [0, 0, 4, 4]), write("b", [4, 4, 4, 4])  # a ranks two targets first, b last
    monkeypatch.setattr("sys.argv", ["x", a, b, "--metrics", "hr@1", "--out", str(tmp_path / "out")])
    script.main()
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["a_values"]["hr@1"] == 0.5 and report["b_values"]["hr@1"] == 0.0
    diff, low, high = report["a_minus_b"]["hr@1"]
    assert diff == 0.5 and 0.0 <= low <= diff <= high <= 1.0
    other = write("c", [0] * 4, [np.arange(5) + 9 for _ in range(4)])
    monkeypatch.setattr("sys.argv", ["x", a, other])
    with pytest.raises(SystemExit, match="do not rank the same lists"):
        script.main()


def test_paired_scores_blend_is_the_fused_ranking_minus_b(tmp_path, monkeypatch):
    from conftest import load_script

    script = load_script("experiments/paired_scores.py")
    # target first. Cases 1-2: A and B each put a different candidate above the target, A on a 100x scale; only
    # their z-scores blended put the target on top (a raw average follows A). Case 3: A alone ranks it first.
    a_scores = [[90, 100, 0, 0, 0]] * 2 + [[200, 100, 0, 0, 0]]
    b_scores = [[0.9, 0, 1, 0, 0]] * 2 + [[0, 1, 0.5, 0.2, 0.1]]

    def write(name, scores):
        s = np.asarray(scores, dtype=float)
        path = tmp_path / f"{name}.parquet"
        pd.DataFrame({"greater": (s[:, 1:] > s[:, [0]]).sum(1), "ties": [0] * 3, "n": [4] * 3,
                      "candidates": [np.arange(5)] * 3, "scores": list(s)}).to_parquet(path)
        return str(path)

    a, b = write("a", a_scores), write("b", b_scores)
    monkeypatch.setattr("sys.argv", ["x", a, b, "--metrics", "hr@1", "--blend", "0", "0.5", "1", "0.50",
                                     "--out", str(tmp_path / "out")])
    script.main()
    blends = json.loads((tmp_path / "out.json").read_text())["blends"]
    assert sorted(blends) == ["0.0", "0.5", "1.0"]  # 0.50 is 0.5
    assert blends["0.0"]["values"]["hr@1"] == round(1 / 3, 4)  # A alone: case 3
    assert blends["1.0"]["values"]["hr@1"] == 0.0 and blends["1.0"]["minus_b"]["hr@1"] == [0.0, 0.0, 0.0]  # B alone
    assert blends["0.5"]["values"]["hr@1"] == round(2 / 3, 4)  # cases 1-2, z-scored (a raw average gives 1/3)
    assert blends["0.5"]["minus_b"]["hr@1"][0] == round(2 / 3, 4)
    monkeypatch.setattr("sys.argv", ["x", a, b, "--blend", "1.5"])
    with pytest.raises(SystemExit, match="must be in"):
        script.main()
    stale = pd.read_parquet(b).assign(greater=[4, 4, 4])  # counts that its scores do not give
    stale.to_parquet(b)
    monkeypatch.setattr("sys.argv", ["x", a, b, "--blend", "0.5"])
    with pytest.raises(SystemExit, match="do not match"):
        script.main()
