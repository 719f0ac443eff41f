"""report.html: written by the evaluate stage, self-contained, escaped, degrading gracefully, and
opening in a real browser (headless Chromium) without console errors."""

from __future__ import annotations

import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from conftest import write_atomic
from mmsrarec.config import load_config
from mmsrarec.evaluate.report import ReportInputs, render_report
from mmsrarec.stages import Runner
from mmsrarec.summarize.curves import write_curves

EVIL = "<script>alert(1)</script>"
N_ITEMS = 40


def write_dataset(folder: Path) -> Path:
    """The toy dataset, with images for two items in three and a script tag in every fourth title."""
    write_atomic(folder, n_items=N_ITEMS)
    (folder / "img").mkdir()
    rows = ["item_id:token\ttitle:token_seq\tgenre:token_seq\timage:token"]
    for i in range(N_ITEMS):
        image = ""
        if i % 3:
            image = f"img/i{i}.png"
            Image.new("RGB", (120, 90), ((37 * i) % 256, (91 * i) % 256, 160)).save(folder / image)
        title = f"Item number {i}" + (f" {EVIL}" if i % 4 == 0 else "")
        rows.append(f"i{i}\t{title}\tgenre{i % 3}\t{image}")
    (folder / "toy.item").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def fake_summarizer_stage(run_dir: Path) -> None:
    """A finished train-summarizer folder (curves and held-out rewards) without running GRPO."""
    folder = run_dir / "train-summarizer"
    folder.mkdir(parents=True)
    history = [{"step": s, "reward": 0.1 + 0.02 * s, "rewards/r_info/mean": 0.7 + 0.01 * s, "loss": 0.5 - 0.01 * s}
               for s in range(1, 11)]
    write_curves(history, {"r_info": "information"}, folder)
    rewards = {"combined": 0.3, "rewards": {"information": 0.8}}
    (folder / "eval.json").write_text('{"held_out_items": 8, "zero_shot": {"combined": 0.1, "rewards": '
                                      '{"information": 0.7}}, "tuned": ' + str(rewards).replace("'", '"') + "}")
    (folder / "manifest.json").write_text("{}")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Runner:
    """The end-to-end toy run (summarize -> index -> train-ranker -> evaluate) with tiny models."""
    from mmsrarec.models.tiny import tiny_causal_lm

    root = tmp_path_factory.mktemp("report")
    data = write_dataset(root / "toy")
    lm = tiny_causal_lm(root / "lm")
    over = [f"runs_dir={root / 'runs'}", "name=toy", "data.source=atomic", f"data.path={data}", "data.name=toy",
            "data.num_negatives=5", "cf.models=[pop, sasrec]", "cf.train.epochs=2",
            "evaluate.methods=[pop, sasrec, mmsrarec]", f"summarize.model.name_or_path={lm}",
            "summarize.max_new_tokens=6", "rank.keywords_from=summarize", f"rank.model.name_or_path={lm}",
            "rank.sft.max_steps=2", "rank.max_examples=16", "rank.score_batch_size=8"]
    runner = Runner(load_config(None, over))
    fake_summarizer_stage(runner.run_dir)
    runner.run("evaluate")
    return runner


@pytest.fixture(scope="module")
def baselines_run(tmp_path_factory) -> Path:
    """Pop only: no keywords, no index, no summarizer."""
    root = tmp_path_factory.mktemp("baselines")
    data = write_dataset(root / "toy")
    over = [f"runs_dir={root / 'runs'}", "name=base", "data.source=atomic", f"data.path={data}", "data.name=toy",
            "data.num_negatives=5", "cf.models=[pop]", "evaluate.methods=[pop]", "evaluate.report_users=3"]
    runner = Runner(load_config(None, over))
    runner.run("evaluate")
    return runner.run_dir


class Links(HTMLParser):
    """Every src and href in a page, and the tags it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href")]


def parse(page: str) -> Links:
    links = Links()
    links.feed(page)
    return links


def test_report_is_self_contained_and_escapes_item_text(full_run):
    page = (full_run.run_dir / "evaluate" / "report.html").read_text(encoding="utf-8")
    links = parse(page)
    assert links.urls and all(u.startswith("data:") for u in links.urls), \
        [u[:40] for u in links.urls if not u.startswith("data:")]
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page, re.I)
    assert "script" not in links.tags and EVIL not in page
    assert html_escaped(EVIL) in page  # the title is shown, as text
    # every optional part of a full run is there
    assert page.count('class="user"') == 5
    assert "data:image/jpeg;base64," in page        # history thumbnails
    assert 'class="noimg"' in page                  # and an empty box for the items without an image
    assert "data:image/png;base64," in page         # leaderboard.png and reward_curves.png
    assert "Retrieved context" in page and 'class="neighbours"' in page
    assert "keywords from summarize" in page
    assert 'id="curves"' not in page  # the ranker's keywords are the zero-shot policy's: no GRPO curves to show
    run = full_run.run_dir
    curves = render_report(ReportInputs(full_run.cfg, run / "prepare", run / "evaluate",
                                        summarizer=run / "train-summarizer"))
    assert 'id="curves"' in curves and "information" in curves
    for method in ("pop", "sasrec", "mmsrarec"):
        assert f'data-method="{method}"' in page
    assert page.count("class=target") == 5 * 3     # the true item marked once per user and method
    # both AUCs of the sampled lists, named apart and explained: pooled over all rows, and the per-case mean
    assert "<th>test auc</th><th>test gauc</th>" in page and "<th>valid auc</th><th>valid gauc</th>" in page
    assert "auc is one ROC AUC pooled over all test rows" in page and "gauc is the mean of per-case AUCs" in page


def html_escaped(text: str) -> str:
    import html
    return html.escape(text, quote=True)


def scored(run: Path) -> dict[str, Path]:
    """method -> its sampled test case file, from the run's scoring stages."""
    from mmsrarec.evaluate.casefiles import case_path, read_methods

    return {m: case_path(run / stage, m, "sampled", "test") for stage in ("score-cf", "score-ranker")
            for m in read_methods(run / stage)}


def test_keywords_and_retrieved_context_are_shown_escaped(full_run, tmp_path):
    """The tiny summarizer writes no usable keywords, so a keyword table is given here; the retrieved context
    is the one the ranker's prompts showed, read from score-ranker's case file."""
    import pandas as pd

    run = full_run.run_dir
    items = pd.read_parquet(run / "prepare" / "items.parquet")["item"].tolist()
    table = tmp_path / "keywords.parquet"
    pd.DataFrame({"item": items, "keywords": [[f"kw{i}", "<img src=x onerror=alert(2)>"] for i in items]}
                 ).to_parquet(table)
    page = render_report(ReportInputs(full_run.cfg, run / "prepare", run / "evaluate", table, cases=scored(run)))
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    history_keywords = re.findall(r'<div class="kw">kw\d+ · ', page)
    assert len(history_keywords) >= 5 * 5  # every history card of the 5 users
    context = re.findall(r'<p class="context">([^<]*)</p>', page)
    shown = pd.read_parquet(run / "score-ranker" / "sampled" / "mmsrarec_test.parquet")["context"]
    picked = [int(c) for c in re.findall(r'data-case="(\d+)"', page)]
    assert len(context) == 5 and context == [html_escaped(shown[c]) or "<i>(empty)</i>" for c in picked]


def test_the_rankers_table_shows_the_candidate_notes_its_prompts_show(full_run):
    """With rank.candidate_votes / candidate_cf_rank, each candidate in the ranker's table carries the
    note its prompt showed (the votes of the index searched again, the CF model's rank), as score-ranker
    stored it; other tables don't."""
    import copy

    import pandas as pd

    from mmsrarec.cf.stage import load_trained
    from mmsrarec.rank.stage import cf_ranks

    cfg = copy.deepcopy(full_run.cfg)
    cfg.name = "notes"
    cfg.rank.candidate_votes, cfg.rank.candidate_cf_rank = 3, "sasrec"
    runner = Runner(cfg, reuse=[full_run.run_dir])  # the data, CF models, keywords and index are linked
    runner.run("evaluate")
    run = runner.run_dir
    page = (run / "evaluate" / "report.html").read_text(encoding="utf-8")
    tables = re.findall(r'<table class="ranking" data-method="(\w+)">(.*?)</table>', page, re.S)
    shown = [body for method, body in tables if method == "mmsrarec"]
    assert len(shown) == 5 and all(body.count("of 3 similar users; SASRec ranks it") == 6 for body in shown)
    assert not any("similar users" in body for method, body in tables if method != "mmsrarec")
    case = int(re.search(r'data-case="(\d+)"', page).group(1))  # the first user's ranks, computed here
    test = pd.read_parquet(run / "prepare" / "test.parquet")
    model = load_trained(run / "train-cf", "sasrec", cfg, len(pd.read_parquet(run / "prepare" / "items.parquet")))[0]
    ranks = cf_ranks(model, [test["history"].iloc[case]])[0]
    target = int(test["target"].iloc[case])
    assert re.search(rf"✓ [^<]*<span class=\"muted small\">\(chosen next by \d of 3 similar users; SASRec ranks it "
                     rf"{ranks[target]}\)", shown[0])


def test_baselines_only_report_renders_without_optional_parts(baselines_run):
    page = (baselines_run / "evaluate" / "report.html").read_text(encoding="utf-8")
    assert page.count('class="board"') == 2 and page.count('class="user"') == 3
    assert 'data-method="pop"' in page and page.count("class=target") == 3
    assert "Retrieved context" not in page and 'id="curves"' not in page and "no keywords" in page


def test_a_catalogue_without_images_shows_no_empty_image_boxes():
    from mmsrarec.config import load_config
    from mmsrarec.evaluate.report import UserView
    from mmsrarec.rank.prompts import Catalog

    def card(images):
        view = UserView(Catalog({1: "Heat", 2: "Up"}, {1: "", 2: ""}, {1: ["crime"]}, images), {1: "i1", 2: "i2"},
                        {}, load_config(None, []).data.images)
        return view.item_card(1)

    assert "noimg" not in card({1: "", 2: ""}) and "Heat" in card({1: "", 2: ""})  # ML-100K: no item has one
    assert 'class="noimg"' in card({1: "", 2: "/no/such.jpg"})


def test_sampled_users_follow_the_seed(baselines_run):
    cfg = load_config(None, [f"runs_dir={baselines_run.parent}", "name=base", "evaluate.methods=[pop]",
                             "cf.models=[pop]", "evaluate.report_users=4"])
    inputs = ReportInputs(cfg, baselines_run / "prepare", baselines_run / "evaluate")
    cases = lambda page: re.findall(r'data-case="(\d+)"', page)  # noqa: E731
    first = cases(render_report(inputs))
    assert len(first) == 4 and first == cases(render_report(inputs))
    cfg.seed += 1
    assert cases(render_report(inputs)) != first
    cfg.evaluate.report_users = 0
    page = render_report(inputs)
    assert not cases(page) and 'class="board"' in page


def chrome():
    """Headless Chromium through selenium; fails (never skips) when either is missing, so CI notices."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install -e '.[test]'")
    driver_path = shutil.which("chromedriver")
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if driver_path is None or browser is None:
        pytest.fail("chromium / chromedriver not found: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


def test_report_opens_in_chromium_without_console_errors(full_run, tmp_path):
    from selenium.webdriver.common.by import By

    report = full_run.run_dir / "evaluate" / "report.html"
    driver = chrome()
    try:
        driver.get(report.as_uri())
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        assert driver.title.startswith("toy")
        boards = driver.find_elements(By.CSS_SELECTOR, "table.board")
        assert {b.get_attribute("data-protocol") for b in boards} == {"sampled", "full"}
        assert "sasrec" in boards[0].text and "mmsrarec" in boards[0].text
        users = driver.find_elements(By.CSS_SELECTOR, "article.user")
        assert len(users) == 5 and all(u.find_elements(By.CSS_SELECTOR, "table.ranking") for u in users)
        broken = driver.execute_script(
            "return [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length")
        assert broken == 0 and len(driver.find_elements(By.TAG_NAME, "img")) > 2
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(int(height) + 100, 12000))
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        if os.environ.get("MMSRAREC_SCREENSHOT_DIR"):
            target = Path(os.environ["MMSRAREC_SCREENSHOT_DIR"])
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, target / "report.png")
    finally:
        driver.quit()
