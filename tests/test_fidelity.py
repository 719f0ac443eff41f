"""docs/fidelity.md is kept true: every config claim in its tables holds for every paper config it names.

A claim is a backticked `key = value` in a table row (the value as YAML), optionally prefixed by the
datasets it is about: `amazon: data.user_k = 6`. Unprefixed claims hold for every paper config
(configs/paper/*_qwen25vl7b.yaml); `amazon` and `microlens` name the configs of that data source.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mmsrarec.config import load_config
from mmsrarec.configtools import to_dict

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "fidelity.md"
PAPER = ROOT / "configs" / "paper"
CONFIGS = sorted(PAPER.glob("*_qwen25vl7b.yaml"))
SOURCES = {"amazon": "amazon2023", "microlens": "microlens"}
CLAIM = re.compile(r"`(?:(?P<who>[a-z]+(?:,[a-z]+)*): )?(?P<key>[a-z_]+(?:\.[a-z_0-9]+)+) = (?P<value>[^`]+)`")


def claims() -> list[tuple[str, str, object, int]]:
    """(who, dotted key, value, line number) of every claim in a table row of docs/fidelity.md."""
    out = []
    for number, line in enumerate(DOC.read_text().splitlines(), 1):
        if line.startswith("|"):
            for m in CLAIM.finditer(line):
                out.append((m["who"] or "", m["key"], yaml.safe_load(m["value"]), number))
    return out


def lookup(tree: dict, key: str, where: str):
    node = tree
    for part in key.split("."):
        assert isinstance(node, dict) and part in node, f"{where}: {key} is not a config key"
        node = node[part]
    return node


def test_the_doc_makes_claims_and_names_every_paper_config() -> None:
    found = claims()
    assert len(found) >= 20, "docs/fidelity.md lost its checkable claims"
    assert len(CONFIGS) == 3
    text = DOC.read_text()
    for path in CONFIGS:
        assert path.name in text, f"docs/fidelity.md does not name {path.name}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_claim_holds_for_the_paper_config(path: Path) -> None:
    cfg = load_config(path)
    tree = to_dict(cfg)
    checked = 0
    for who, key, value, number in claims():
        names = who.split(",") if who else list(SOURCES)
        unknown = [n for n in names if n not in SOURCES]
        assert not unknown, f"docs/fidelity.md:{number}: unknown dataset prefix {unknown}"
        if cfg.data.source not in {SOURCES[n] for n in names}:
            continue
        got = lookup(tree, key, f"docs/fidelity.md:{number}")
        assert got == value, f"docs/fidelity.md:{number} says {key} = {value!r}; {path.name} has {got!r}"
        checked += 1
    assert checked >= 20


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_paper_config_reports_the_papers_metrics(path: Path) -> None:
    """The sampled protocol's rows carry HR@5, NDCG@5 and both AUCs: `auc` pooled over all rows (the papers'),
    `gauc` the mean per-case AUC; MLLM-MSR is a row of every paper config."""
    import numpy as np

    from mmsrarec.evaluate.metrics import metric_names

    from mmsrarec.evaluate.metrics import pooled_auc
    from mmsrarec.evaluate.stage import HEADLINE

    cfg = load_config(path)
    names = metric_names(cfg.evaluate.ks, "sampled")
    assert {"hr@5", "ndcg@5", "auc", "gauc"} <= set(names)
    assert {"hr@5", "ndcg@5", "auc", "gauc"} <= set(HEADLINE["sampled"])
    assert "mllm-msr" in cfg.evaluate.methods and cfg.evaluate.protocols == ["sampled"]

    # two cases whose positives beat their own negatives but not the other case's: per-case AUC 1, pooled 0.75
    scores = np.array([[0.2, 0.1], [0.9, 0.8]])
    assert pooled_auc(scores) == pytest.approx(0.75)
