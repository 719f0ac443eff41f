"""The frozen paper-setting configs (configs/paper/): each parses, and with tiny stand-ins (a tiny
Qwen2.5-VL for the 7B model, CPU for CUDA, a small dataset in the source's real file format) builds
its whole pipeline (MMSRARec and MLLM-MSR) and experiment and runs its prepare stage on the papers'
users split. tests/test_fidelity.py checks their settings against docs/fidelity.md."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from mmsrarec.config import load_config
from mmsrarec.experiment import members
from mmsrarec.stages import Runner

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper"
CONFIGS = sorted(p.name for p in PAPER.glob("*_qwen25vl7b.yaml"))
N_USERS, N_ITEMS, LENGTH = 40, 30, 7  # every user and item survives the (7, 5)-core; 20 negatives remain


def amazon(folder: Path, category: str) -> None:
    folder.mkdir(parents=True)
    reviews = [{"user_id": f"u{u}", "parent_asin": f"B{(u + j) % N_ITEMS}", "timestamp": 1_600_000_000_000 + 1000 * j,
                "rating": 5.0} for u in range(N_USERS) for j in range(LENGTH)]
    metas = [{"parent_asin": f"B{i}", "title": f"Item {i}", "features": ["soft"], "description": ["A thing."],
              "categories": ["Baby"], "images": []} for i in range(N_ITEMS)]
    (folder / f"{category}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reviews))
    (folder / f"meta_{category}.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metas))


def microlens(folder: Path) -> None:
    (folder / "covers").mkdir(parents=True)
    pairs = [f"{u},{(u + j) % N_ITEMS},{1583314842000 + j}" for u in range(N_USERS) for j in range(LENGTH)]
    (folder / "MicroLens-50k_pairs.csv").write_text("user,item,timestamp\n" + "\n".join(pairs) + "\n")
    (folder / "MicroLens-50k_titles.csv").write_text("item,title\n" + "".join(f"{i},video {i}\n" for i in range(N_ITEMS)))
    for i in range(N_ITEMS):
        Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(folder / "covers" / f"{i}.jpg")


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    from mmsrarec.models.tiny import tiny_qwen2_5_vl
    return tiny_qwen2_5_vl(tmp_path_factory.mktemp("vlm") / "qwen25vl")


@pytest.mark.parametrize("name", CONFIGS)
def test_paper_config_builds_its_pipeline_on_stand_ins(name: str, tmp_path: Path, tiny_vlm: Path) -> None:
    cfg = load_config(PAPER / name)
    assert cfg.rank.model.name_or_path == cfg.summarize.model.name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert len(cfg.experiment.seeds) == 3 and len(cfg.experiment.variants) == 6
    data = tmp_path / "data"
    if cfg.data.source == "amazon2023":
        amazon(data, cfg.data.name)
    else:
        microlens(data)
    model = {"name_or_path": str(tiny_vlm), "kind": "vlm", "dtype": "float32", "device": "cpu"}
    stand_ins = [f"runs_dir={tmp_path / 'runs'}", f"data.path={data}", "data.images.download=false",
                 "cf.train.device=cpu", f"summarize.model={json.dumps(model)}", f"rank.model={json.dumps(model)}",
                 f"train_summarizer.reference={json.dumps(model)}", "train_summarizer.embedder.device=cpu",
                 f"mllm_msr.model={json.dumps(model)}", f"mllm_msr.recommender={json.dumps(model)}"]
    cfg = load_config(PAPER / name, stand_ins)
    runner = Runner(cfg)
    assert set(runner.plan("evaluate")) == {"prepare", "train-cf", "score-cf", "train-summarizer", "summarize-tuned",
                                            "index", "train-ranker", "score-ranker", "describe-items", "summarize-users",
                                            "train-mllmmsr", "score-mllmmsr", "evaluate"}
    runs = members(cfg, str(PAPER / name), stand_ins)
    assert len(runs) == 3 * 7
    for member in runs:  # every variant builds its own plan
        Runner(member.cfg).plan("evaluate")
    no_rl = next(m for m in runs if m.method == "mmsrarec-no-rl")
    assert "summarize" in Runner(no_rl.cfg).plan("evaluate")
    runner.run("prepare")
    stats = json.loads((runner.run_dir / "prepare" / "stats.json").read_text())
    assert stats["users"] == N_USERS and stats["items"] == N_ITEMS
    cases = {split: len(pd.read_parquet(runner.run_dir / "prepare" / f"{split}.parquet"))
             for split in ("valid", "test")}
    assert cases == {"valid": 4, "test": 4}  # users split 8:1:1 of 40 users, one case per held-out user
