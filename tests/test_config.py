from pathlib import Path

import pytest

from mmsrarec.config import RunConfig, load_config
from mmsrarec.configtools import help_rows
from mmsrarec.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_without_a_file():
    cfg = load_config(None)
    assert isinstance(cfg, RunConfig) and cfg.data.source == "movielens100k" and cfg.cf.train.max_len == 50


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    load_config(path)


def test_unknown_key_names_key_file_and_line(tmp_path):
    path = write(tmp_path, "name: x\ndata:\n  soruce: atomic\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "data.soruce" in msg and "c.yaml, line 3" in msg and "data.source" in msg  # suggestion


def test_wrong_type_and_impossible_value(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml, line 2: key 'cf.train.epochs' must be an integer"):
        load_config(write(tmp_path, "cf:\n  train: {epochs: many}\n"))
    with pytest.raises(ConfigError, match=r"line 3: key 'cf.train.lr' must be > 0"):
        load_config(write(tmp_path, "cf:\n  train:\n    lr: -1\n"))
    with pytest.raises(ConfigError, match=r"data.split' must be one of 'loo' \| 'users'"):
        load_config(write(tmp_path, "data: {split: random}\n"))


def test_overrides_and_base_layers(tmp_path):
    write(tmp_path, "name: base\nseed: 1\ndata: {num_negatives: 7}\n", "base.yaml")
    path = write(tmp_path, "base: base.yaml\nseed: 2\n")
    cfg = load_config(path, ["cf.train.epochs=3", "data.user_fractions=[0.6, 0.2, 0.2]"])
    assert (cfg.name, cfg.seed, cfg.data.num_negatives, cfg.cf.train.epochs) == ("base", 2, 7, 3)
    assert cfg.data.user_fractions == [0.6, 0.2, 0.2]
    with pytest.raises(ConfigError, match=r"--set data.num_negatve=3: unknown key 'data.num_negatve'"):
        load_config(path, ["data.num_negatve=3"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["seed"])


def test_cross_section_checks(tmp_path):
    with pytest.raises(ConfigError, match="evaluate.methods.*sasrec"):
        load_config(None, ["cf.models=[pop]", "evaluate.methods=[pop, sasrec]"])
    with pytest.raises(ConfigError, match="cf.params.sasrec"):
        load_config(None, ["cf.params.sasrec.hiden_size=3"])
    with pytest.raises(ConfigError, match="data.source.*movielens100k"):
        load_config(None, ["data.source=movielens"])
    fuse = ["evaluate.methods=[pop, sasrec, mmsrarec]", "evaluate.fuse=[sasrec]"]
    assert load_config(None, fuse).evaluate.fuse == ["sasrec"]
    with pytest.raises(ConfigError, match="evaluate.fuse.*pop"):  # a CF model not on the board
        load_config(None, ["evaluate.methods=[sasrec, mmsrarec]", "evaluate.fuse=[pop]"])
    with pytest.raises(ConfigError, match="evaluate.fuse.*mmsrarec"):  # no ranker to blend
        load_config(None, ["evaluate.methods=[pop, sasrec]", "evaluate.fuse=[sasrec]"])
    with pytest.raises(ConfigError, match="fuse.*valid"):  # the weight is picked on valid
        load_config(None, [*fuse, "evaluate.llm_splits=[test]"])
    with pytest.raises(ConfigError, match="fuse.*'test'"):  # and reported on test
        load_config(None, [*fuse, "evaluate.llm_splits=[valid]"])
    with pytest.raises(ConfigError, match="rank.name.*also names a CF model"):  # two stages would score 'sasrec'
        load_config(None, ["rank.name=sasrec"])
    with pytest.raises(ConfigError, match=r"score_files.*mmsrarec\+sasrec"):  # a blend's name
        load_config(None, [*fuse, "evaluate.score_files=[mmsrarec+sasrec=x.csv]"])
    with pytest.raises(ConfigError, match="fuse_metric.*hr@7"):
        load_config(None, [*fuse, "evaluate.fuse_metric=hr@7"])
    # the pooled auc of per-case z-scored blends means nothing: refused, pointing at the per-case gauc
    with pytest.raises(ConfigError, match="evaluate.fuse_metric.*pooled.*'gauc'"):
        load_config(None, [*fuse, "evaluate.fuse_metric=auc"])
    assert load_config(None, [*fuse, "evaluate.fuse_metric=gauc"]).evaluate.fuse_metric == "gauc"


def test_every_key_has_help():
    rows = help_rows(RunConfig)
    assert len(rows) > 20
    assert [key for key, _, text in rows if not text] == []
