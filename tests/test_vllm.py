"""The optional vLLM backend: `summarize.backend: vllm` for keyword generation and
`train_summarizer.use_vllm` for GRPO's sampling. Where vllm cannot be imported, asking for it stops at
plan time with what to install; where it imports (a CUDA machine with `pip install vllm`), the
summaries it writes are checked against transformers' greedy ones."""

from __future__ import annotations

import sys

import pandas as pd
import pytest
import torch

from mmsrarec.config import load_config
from mmsrarec.errors import ConfigError
from mmsrarec.stages import Runner
from mmsrarec.summarize.config import SummarizerTrainConfig


def test_vllm_where_it_cannot_be_imported_is_a_plan_time_error(toy_overrides, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    backend = Runner(load_config(None, [*toy_overrides, "summarize.backend=vllm"]))
    for stage in ("summarize", "summarize-tuned"):
        with pytest.raises(ConfigError, match=r"summarize.backend asks for vLLM.*pip install vllm.*summarize.backend: hf"):
            backend.plan(stage)
    assert backend.plan("prepare") == ["prepare"]  # stages that do not generate keywords do not care
    grpo = Runner(load_config(None, [*toy_overrides, "train_summarizer.use_vllm=true"]))
    with pytest.raises(ConfigError, match=r"train_summarizer.use_vllm asks for vLLM.*pip install vllm"):
        grpo.plan("train-summarizer")
    assert not (grpo.run_dir / "prepare").exists()  # nothing ran


def test_use_vllm_reaches_trl(tmp_path):
    from mmsrarec.summarize.grpo import trl_config

    args = trl_config(SummarizerTrainConfig(use_vllm=True, vllm_mode="server", vllm_gpu_memory_utilization=0.5),
                      tmp_path, seed=1, device=torch.device("cpu"))
    assert (args.use_vllm, args.vllm_mode, args.vllm_gpu_memory_utilization) == (True, "server", 0.5)
    assert not trl_config(SummarizerTrainConfig(), tmp_path, seed=1, device=torch.device("cpu")).use_vllm
    with pytest.raises(ConfigError, match="vllm_gpu_memory_utilization"):
        load_config(None, ["train_summarizer.vllm_gpu_memory_utilization=0"])


def test_vllm_summaries_match_transformers_greedy(toy_overrides):
    pytest.importorskip("vllm", reason="vllm is not installed (optional; GPU: pip install vllm), so the vLLM "
                                       "summarize backend cannot run here; its missing-package error is tested above")
    over = [*toy_overrides, "summarize.max_items=12", "summarize.max_new_tokens=8"]
    hf = Runner(load_config(None, [*over, "name=hf"]))
    hf.run("summarize")
    vl = Runner(load_config(None, [*over, "name=vllm", "summarize.backend=vllm"]))
    vl.run("summarize")
    a, b = (pd.read_parquet(r.run_dir / "summarize" / "keywords.parquet") for r in (hf, vl))
    assert a["item"].tolist() == b["item"].tolist()
    assert (b["raw_text"].str.len() > 0).all() and b["keywords"].map(len).mean() > 0
    same = (a["raw_text"] == b["raw_text"]).mean()
    assert same >= 0.5, f"only {same:.0%} of the greedy summaries agree with transformers'"
