"""Training under `accelerate launch` with 2 processes: GRPO (train-summarizer) and SFT (train-ranker)
run on every process, the other stages on the main one, and every process ends with the same trained
LoRA weights, which differ from the initial ones and equal the adapter saved to disk.

DDP and DeepSpeed ZeRO-2/3 run as 2 CPU processes over gloo on the toy data with a tiny model (one
launch trains both stages). FSDP2 needs 2 GPUs (accelerate turns FSDP on for GPU process groups only).
Select with `pytest -m distributed`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmsrarec import distributed

from conftest import write_atomic

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
WORKER = Path(__file__).with_name("distributed_worker.py")
TRAINERS = ("GRPOTrainer", "AnswerLossSFTTrainer")  # the ranker trains packed (rank.sft.pack)


@pytest.fixture(scope="module")
def run_config(tmp_path_factory) -> Path:
    """prepare -> train-summarizer (GRPO) -> summarize-tuned -> train-ranker (SFT), 2 steps each."""
    from mmsrarec.models.tiny import tiny_causal_lm

    folder = tmp_path_factory.mktemp("dist")
    lm = str(tiny_causal_lm(folder / "lm"))
    config = {
        "name": "toy", "runs_dir": str(folder / "runs"),
        "data": {"source": "atomic", "path": str(write_atomic(folder / "toy")), "name": "toy", "num_negatives": 5},
        "summarize": {"model": {"name_or_path": lm, "device": "cpu"}, "max_new_tokens": 8, "batch_size": 8},
        "train_summarizer": {"information_weight": 0, "reconstruction_weight": 0, "length_weight": 1,
                             "max_steps": 2, "save_steps": 1, "prompts_per_step": 2, "num_generations": 2,
                             "max_completion_length": 8, "max_eval_items": 0},
        "rank": {"model": {"name_or_path": lm, "device": "cpu"}, "keywords_from": "summarize-tuned",
                 "use_retrieval": False, "max_examples": 16, "sft": {"max_steps": 2, "batch_size": 4, "save_steps": 1}},
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(accelerate_config: str, args: list[str], cpu: bool = True, timeout: int = 300) -> str:
    """`accelerate launch --config_file configs/accelerate/<accelerate_config> ARGS` with 2 processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    if cpu:  # the same run on a GPU host: gloo, and DeepSpeed's CPU accelerator
        env.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / accelerate_config),
           "--num_processes", "2", "--main_process_port", str(free_port()), *args]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-6000:]}"
    return output


def train_both_stages(accelerate_config: str, run_config: Path, name: str, cpu: bool = True) -> tuple[Path, Path]:
    """Run the pipeline up to train-ranker under the worker; returns (run folder, record folder)."""
    records = run_config.parent / f"records-{name}"
    launch(accelerate_config, [str(WORKER), str(records), "train-ranker", "--config", str(run_config),
                               "--set", f"name={name}"], cpu=cpu)
    return run_config.parent / "runs" / name, records


def assert_same_trained_weights(run_dir: Path, records: Path, distributed_type: str) -> None:
    from safetensors.torch import load_file

    from distributed_worker import weights_digest

    for trainer, stage in zip(TRAINERS, ("train-summarizer", "train-ranker")):
        ranks = [json.loads((records / f"{trainer}-rank{r}.json").read_text()) for r in (0, 1)]
        assert all(r["world"] == 2 and r["steps"] == 2 for r in ranks), ranks
        assert all(r["distributed_type"] == distributed_type for r in ranks), ranks
        assert ranks[0]["after"] == ranks[1]["after"], f"{trainer}: the processes ended with different weights"
        assert ranks[0]["before"] == ranks[1]["before"] and ranks[0]["after"] != ranks[0]["before"], \
            f"{trainer}: training did not change the LoRA weights"
        saved = load_file(run_dir / stage / "adapter" / "adapter_model.safetensors")
        assert weights_digest(saved) == ranks[0]["after"], f"{stage}: the saved adapter is not what was trained"


def assert_pipeline_finished_once(run_dir: Path) -> None:
    """Every stage is in place with its manifest, no .partial folder is left, and what only the main
    process writes was written once."""
    stages = ["prepare", "train-summarizer", "summarize-tuned", "train-ranker"]
    assert sorted(p.name for p in run_dir.iterdir() if p.name != ".locks") == sorted(stages)
    assert sorted(p.name for p in (run_dir / ".locks").iterdir()) == sorted(f"{s}.lock" for s in stages)
    for stage in stages:
        assert (run_dir / stage / "manifest.json").is_file()
    ranker = json.loads((run_dir / "train-ranker" / "ranker.json").read_text())
    examples = (run_dir / "train-ranker" / "examples.jsonl").read_text().splitlines()
    assert len(examples) == sum(ranker["examples_per_task"].values())
    curves = (run_dir / "train-summarizer" / "reward_curves.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in curves[1:]] == ["1", "2"]
    keywords = json.loads((run_dir / "summarize-tuned" / "manifest.json").read_text())["summary"]
    assert keywords["items"] == 39  # both processes' shares, merged once


def test_ddp_on_cpu_trains_both_stages_identically_on_every_process(run_config):
    run_dir, records = train_both_stages("ddp.yaml", run_config, "ddp")
    assert_same_trained_weights(run_dir, records, "DistributedType.MULTI_CPU")
    assert_pipeline_finished_once(run_dir)
    # the documented command form; everything is up to date, so every process skips every stage
    output = launch("ddp.yaml", ["-m", "mmsrarec", "train-ranker", "--config", str(run_config), "--set", "name=ddp"])
    assert output.count("up to date, skipped") == 4, output[-3000:]


def test_ddp_example_loss_counts_the_examples_of_every_process(run_config):
    """rank.sft.loss=example under DDP: each step's example count is gathered from both processes (gloo),
    and both end with the same trained weights. Reuses the ddp run's upstream stages when that test ran first."""
    records = run_config.parent / "records-ddp-example"
    launch("ddp.yaml", [str(WORKER), str(records), "train-ranker", "--config", str(run_config), "--set", "name=ddp",
                        "--set", "rank.sft.loss=example"])
    ranks = [json.loads((records / f"AnswerLossSFTTrainer-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["steps"] == 2 for r in ranks), ranks
    assert ranks[0]["after"] == ranks[1]["after"] != ranks[0]["before"], ranks
    ranker = json.loads((run_config.parent / "runs" / "ddp" / "train-ranker" / "ranker.json").read_text())
    assert ranker["loss_per"] == "example"


def test_evaluate_under_ddp_shares_the_llm_scoring_and_equals_one_process(run_config):
    """Every process scores its share of the cases into one store; the main one writes the leaderboard;
    the scores equal a single process's. Reuses the ddp run's trained stages when that test ran first."""
    import numpy as np
    import pandas as pd

    from mmsrarec.config import load_config
    from mmsrarec.stages import Runner

    sets = ["name=ddp", "cf.models=[pop]", "evaluate.methods=[pop, mmsrarec]", "evaluate.protocols=[sampled]",
            "evaluate.report_users=0"]
    launch("ddp.yaml", ["-m", "mmsrarec", "evaluate", "--config", str(run_config),
                        *[a for s in sets for a in ("--set", s)]])
    run = run_config.parent / "runs" / "ddp"
    scored = run / "score-ranker"

    def writers() -> set[str]:
        return {p.name.split("-")[1] for p in (scored / "llm_scores" / "mmsrarec_test").glob("chunk-*.parquet")}

    assert writers() == {"r000", "r001"}
    rows = {r["method"] for r in json.loads((run / "evaluate" / "metrics.json").read_text())}
    assert rows == {"pop", "mmsrarec"}
    shared = pd.read_parquet(scored / "sampled" / "mmsrarec_test.parquet")
    Runner(load_config(run_config, sets)).run("score-ranker", force=True)
    assert writers() == {"r000"}
    alone = pd.read_parquet(scored / "sampled" / "mmsrarec_test.parquet")
    assert np.allclose(np.stack(shared["scores"]), np.stack(alone["scores"]), atol=1e-5)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_on_cpu(stage, run_config):
    pytest.importorskip("deepspeed", reason="DeepSpeed is the optional [scale] extra: pip install -e '.[scale]'")
    run_dir, records = train_both_stages(f"zero{stage}.yaml", run_config, f"zero{stage}")
    assert_same_trained_weights(run_dir, records, "DistributedType.DEEPSPEED")


def test_fsdp2_on_two_gpus(run_config):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("FSDP2 needs 2 GPUs here: accelerate 1.x enables FSDP only for GPU process groups "
                    "(a CPU group is MULTI_CPU, where FSDP would silently be plain DDP, which mmsrarec refuses); "
                    f"this host has {torch.cuda.device_count()} GPU(s)")
    run_dir, records = train_both_stages("fsdp2.yaml", run_config, "fsdp2", cpu=False)
    assert_same_trained_weights(run_dir, records, "DistributedType.FSDP")


def test_fsdp_on_cpu_is_refused_not_silently_ddp(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(Exception, match="FSDP, which accelerate enables on GPUs only"):
        distributed.check_launch(cpu=True)
    distributed.check_launch(cpu=False)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    distributed.check_launch(cpu=True)


def test_helpers_are_no_ops_in_a_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert not distributed.join() and distributed.is_main() and distributed.world_size() == 1
    distributed.barrier()
    assert distributed.broadcast({"a": 1}) == {"a": 1}
