"""report.html: one self-contained page a researcher opens in a browser after a run.

It shows the leaderboard (per protocol, test and valid metrics, and leaderboard.png), its slices (each
method's headline metric per slice of the test cases by target popularity and history length, with
intervals and paired differences, and slices.png; evaluate/slices.py), the summarizer's
GRPO reward curves when the run trained one, and, for evaluate.report_users test cases drawn with
cfg.seed, the user's history (thumbnails, keywords), the retrieved context and every method's ranking
of the stored candidates with the true item marked.

Everything is inline (CSS, images as base64 data URIs, no script), so the file can be mailed or
archived alone. All text from data (titles, keywords) is HTML-escaped. Everything but the leaderboard
is optional: a missing or damaged keyword table, curve or image is replaced by a note.

It reads only artifacts of stages the evaluate stage declares in its needs (so they are in its key): the
per-case files of the scoring stages (what each method scored, and what the ranker's prompts showed: the
retrieved context, the similar users behind it, the candidate notes), the keyword table and the reward curves.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import pandas as pd

from ..artifacts import read_json, write_text
from ..data.prepare import load_prepared
from ..errors import MmsrarecError
from .leaderboard import AUC_LINES, KEY_METRICS, SLICE_LINES, interval_text, method_cell, slice_tables
from .metrics import METRICS, POOLED

T = TypeVar("T")
HISTORY_SHOWN = 20  # most recent history items shown per user
THUMB_PX = 72


@dataclass
class ReportInputs:
    """Where the report reads from: the run config and the folders of the stages it shows. Only artifacts:
    per-case files hold what each method scored and what the ranker's prompts showed."""

    cfg: Any                        # RunConfig
    prepare: Path
    evaluate: Path                  # leaderboard.json/.png
    keywords: Path | None = None    # a keywords.parquet (None: no keywords shown)
    summarizer: Path | None = None  # the train-summarizer folder (None: no reward curves)
    cases: dict[str, Path] = field(default_factory=dict)  # method -> its sampled test case file

    @classmethod
    def from_context(cls, ctx: Any, cases: dict[str, Path]) -> "ReportInputs":
        """From the evaluate stage's context (its own folder, and the stages it declared it reads) and the
        sampled test case file of each method on its leaderboard."""
        from ..rank.config import keyword_stage

        needs, cfg = ctx.needs or (), ctx.cfg
        stage = keyword_stage(cfg) if cfg.rank.name in cfg.evaluate.methods else None  # the ranker's keywords
        keywords = ctx.input(stage) / "keywords.parquet" if stage in needs else None
        return cls(ctx.cfg, ctx.input("prepare"), Path(ctx.out), keywords,
                   ctx.input("train-summarizer") if "train-summarizer" in needs else None, cases)


def write_report(inputs: ReportInputs, out_path: str | Path) -> Path:
    """Render report.html from `inputs` and write it atomically to out_path."""
    return write_text(out_path, render_report(inputs))


# ----------------------------------------------------------------------------- helpers

def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else esc(value)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def optional(what: str, load: Callable[[], T], notes: list[str]) -> T | None:
    """load(), or None with a note in the report when the artifact is missing or damaged."""
    try:
        return load()
    except (MmsrarecError, OSError, ValueError, KeyError) as exc:
        notes.append(f"{what} not shown: {exc}")
        return None


@lru_cache(maxsize=4096)
def thumbnail(path: str, max_bytes: int, max_pixels: int) -> str | None:
    """A small JPEG data URI of the image at path, or None when there is no usable image."""
    from ..data.images import load_image

    image = load_image(path, max_bytes, max_pixels) if path else None
    if image is None:
        return None
    image.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return data_uri(buf.getvalue(), "image/jpeg")


def png(path: Path | None, alt: str) -> str:
    if path is None or not path.is_file():
        return ""
    return f'<img class="chart" alt="{esc(alt)}" src="{data_uri(path.read_bytes(), "image/png")}">'


# ----------------------------------------------------------------------------- sections

def leaderboard_section(rows: list[dict], chart: Path) -> str:
    board = pd.DataFrame(rows)
    out = ['<section id="leaderboard"><h2>Leaderboard</h2>']
    for protocol, part in board.groupby("protocol", sort=False):
        metrics = [m for m in KEY_METRICS.get(protocol, []) if f"test_{m}" in part] or \
            [c[5:] for c in part if c.startswith("test_") and c[5:].partition("@")[0] in (*METRICS, *POOLED)]
        if not metrics:
            continue
        primary = metrics[min(3, len(metrics) - 1)]
        part = part.sort_values(f"test_{primary}", ascending=False)
        cases = int(part["test_cases"].iloc[0]) if "test_cases" in part else 0
        columns = [f"{split}_{m}" for split in ("test", "valid") for m in metrics
                   if f"{split}_{m}" in part and part[f"{split}_{m}"].notna().any()]
        best = {c: part[c].max() for c in columns}
        head = "".join(f"<th>{esc(c.replace('_', ' '))}</th>" for c in columns)
        out.append(f'<h3>{esc(protocol)} <span class="muted">({cases} test cases; sorted by test {esc(primary)})'
                   f'</span></h3><table class="board" data-protocol="{esc(protocol)}"><thead><tr><th>method</th>'
                   f"{head}<th>train s</th><th>eval s (test)</th></tr></thead><tbody>")
        for _, r in part.iterrows():
            cells = "".join(('<td class="best">' if r[c] == best[c] else "<td>") + f"{fmt(r[c])}</td>" for c in columns)
            out.append(f"<tr><th>{esc(method_cell(r))}</th>{cells}<td>{fmt(r.get('train_time_s'), 1)}</td>"
                       f"<td>{fmt(r.get('test_eval_time_s'), 2)}</td></tr>")
        out.append("</tbody></table>")
        if any(f"{split}_{m}" in columns for split in ("test", "valid") for m in ("auc", "gauc")):
            out.append('<p class="muted auc-note">' + " ".join(esc(line.replace("`", "")) for line in AUC_LINES)
                       + "</p>")
    out.append(png(chart, "leaderboard chart") + "</section>")
    return "\n".join(out)


def slices_section(folder: Path, notes: list[str]) -> str:
    """The slices of the test cases (slices.json, slices.png of the evaluate folder); nothing when the folder has
    none (an evaluate stage of an earlier version)."""
    if not (folder / "slices.json").is_file():
        return ""
    from .slices import read_slices

    loaded = optional("slices", lambda: read_slices(folder), notes)
    if loaded is None:
        return ""
    table, meta = loaded
    order = {name: s["labels"] for name, s in meta.get("slicings", {}).items()}
    out = ['<section id="slices"><h2>Slices</h2>',
           '<p class="muted">' + " ".join(esc(line) for line in SLICE_LINES) + "</p>"]
    for protocol, slicing, metric, labels, methods, cells, paired, cases in slice_tables(table, order):
        head = "".join(f"<th>{esc(m)}</th>" for m in methods)
        diffs = [m for m in methods if any(pd.notna((cells.get((label, m)) or {}).get("diff")) for label in labels)]
        out.append(f"<h3>{esc(protocol)}: test {esc(metric)} by {esc(slicing)}</h3>"
                   f'<table class="slices" data-protocol="{esc(protocol)}" data-slicing="{esc(slicing)}"><thead><tr>'
                   f"<th>slice</th><th>cases</th>{head}<th>paired with</th>"
                   + "".join(f"<th>{esc(m)} minus it</th>" for m in diffs) + "</tr></thead><tbody>")
        for label in labels:
            cells_html = "".join(f"<td>{esc(interval_text(cells.get((label, m))))}</td>" for m in methods)
            diff_html = "".join(f"<td>{esc(interval_text(cells.get((label, m)), 'diff', '+'))}</td>" for m in diffs)
            out.append(f"<tr><th>{esc(label)}</th><td>{cases[label]}</td>{cells_html}<td>{esc(paired[label])}</td>"
                       f"{diff_html}</tr>")
        out.append("</tbody></table>")
    out.append(png(folder / "slices.png", "slices chart") + "</section>")
    return "\n".join(out)


def curves_section(folder: Path | None, notes: list[str]) -> str:
    if folder is None:
        return ""
    table = optional("reward curves", lambda: pd.read_csv(folder / "reward_curves.csv"), notes)
    out = ['<section id="curves"><h2>Summarizer training (GRPO reward curves)</h2>',
           png(folder / "reward_curves.png", "reward curves")]
    if table is not None and len(table):
        cols = [c for c in table.columns if c != "step"]
        first, last = table.iloc[0], table.iloc[-1]
        out.append(f'<table class="curves"><thead><tr><th></th>{"".join(f"<th>{esc(c)}</th>" for c in cols)}'
                   "</tr></thead><tbody>")
        for label, row in ((f"step {int(first['step'])}", first), (f"step {int(last['step'])}", last)):
            out.append(f"<tr><th>{esc(label)}</th>{''.join(f'<td>{fmt(float(row[c]))}</td>' for c in cols)}</tr>")
        out.append("</tbody></table>")
    evaluation = optional("held-out rewards", lambda: read_json(folder / "eval.json"), notes) \
        if (folder / "eval.json").is_file() else None
    if evaluation and evaluation.get("tuned"):
        names = list(evaluation["tuned"].get("rewards", {}))
        out.append(f'<p>Held-out items: {esc(evaluation.get("held_out_items", ""))}</p><table class="curves"><thead>'
                   f'<tr><th>policy</th><th>combined</th>{"".join(f"<th>{esc(n)}</th>" for n in names)}</tr></thead>'
                   "<tbody>")
        for label in ("zero_shot", "tuned"):
            res = evaluation.get(label) or {}
            if res:
                out.append(f"<tr><th>{esc(label)}</th><td>{fmt(res.get('combined'))}</td>"
                           + "".join(f"<td>{fmt(res.get('rewards', {}).get(n))}</td>" for n in names) + "</tr>")
        out.append("</tbody></table>")
    return "\n".join(out) + "</section>"


@dataclass
class UserView:
    """What the per-user section needs, loaded once."""

    catalog: Any                      # rank.prompts.Catalog
    item_ids: dict[int, str]          # item -> the dataset's item id
    user_ids: dict[int, str]          # user -> the dataset's user id
    images: Any                       # data.images config (size limits)
    scores: dict[str, pd.DataFrame] = field(default_factory=dict)  # method -> its sampled test case file
    ranker: str = ""                  # rank.name: its case file has what its prompts showed (context, notes)

    def __post_init__(self) -> None:
        self.has_images = any(self.catalog.images.values())

    def item_card(self, item: int) -> str:
        uri = thumbnail(self.catalog.images.get(item, ""), self.images.max_bytes, self.images.max_pixels)
        # an empty box marks a missing image only in a catalogue that has images (ML-100K has none)
        img = f'<img alt="" src="{uri}">' if uri else '<div class="noimg"></div>' if self.has_images else ""
        kws = self.catalog.keywords.get(item)
        desc = f'<div class="kw">{esc(" · ".join(kws))}</div>' if kws else \
            f'<div class="muted small">{esc(self.catalog.descriptions.get(item, ""))}</div>'
        return (f'<figure class="item">{img}<figcaption><b>{esc(self.catalog.titles.get(item, item))}</b> '
                f'<span class="muted small">#{esc(self.item_ids.get(item, item))}</span>{desc}</figcaption></figure>')

    def context(self, case: int) -> str:
        """The retrieved context the ranker's prompt showed for this case, and the similar users behind it."""
        frame = self.scores.get(self.ranker)
        if frame is None or "context" not in frame or case >= len(frame):
            return ""
        row = frame.iloc[case]
        lines = "".join(f"<tr><td>{esc(u)}</td><td>{fmt(float(s), 3)}</td><td>{esc(self.catalog.titles.get(int(i), i))}"
                        "</td></tr>" for u, s, i in zip(row["neighbours"], row["similarities"], row["next_items"]))
        if not lines:
            return (f'<h4>Retrieved context</h4><p class="context">{esc(row["context"]) or "<i>(empty)</i>"}</p>'
                    '<p class="muted">no neighbours stored for this case</p>')
        return (f'<h4>Retrieved context</h4><p class="context">{esc(row["context"]) or "<i>(empty)</i>"}</p>'
                '<table class="neighbours"><thead><tr><th>similar training user</th><th>similarity</th>'
                f"<th>their next item</th></tr></thead><tbody>{lines}</tbody></table>")

    def ranking(self, method: str, case: int, target: int) -> str:
        frame = self.scores[method]
        if case >= len(frame):
            return ""
        candidates = [int(c) for c in frame["candidates"].iloc[case]]
        scores = np.asarray(frame["scores"].iloc[case], dtype=np.float64)
        target_score = scores[candidates.index(target)] if target in candidates else math.nan
        greater, ties = int((scores > target_score).sum()), int((scores == target_score).sum()) - 1
        where = f"{greater + 1}" if ties == 0 else f"{greater + 1}–{greater + ties + 1} (tied)"
        order = sorted(range(len(candidates)), key=lambda j: (-scores[j], candidates[j]))  # ties: by item, not target
        notes = list(frame["notes"].iloc[case]) if "notes" in frame else None  # what the ranker's prompt said
        rows = []
        for rank, j in enumerate(order, 1):
            hit = candidates[j] == target
            title = esc(self.catalog.titles.get(candidates[j], candidates[j]))
            if notes and notes[j]:
                title += f' <span class="muted small">({esc(notes[j])})</span>'
            rows.append(f'<tr{" class=target" if hit else ""}><td>{rank}</td><td>{"✓ " if hit else ""}{title}</td>'
                        f"<td>{scores[j]:.4g}</td></tr>")
        return (f'<table class="ranking" data-method="{esc(method)}"><caption><b>{esc(method)}</b>: true item at rank '
                f"{esc(where)}</caption><thead><tr><th>#</th><th>candidate</th><th>score</th></tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>")

    def article(self, case: int, row: pd.Series) -> str:
        """One test case: the user's history, retrieved context and every method's ranking."""
        history, target = [int(h) for h in row["history"]], int(row["target"])
        shown = history[-HISTORY_SHOWN:]
        more = f" (last {len(shown)} of {len(history)})" if len(shown) < len(history) else ""
        user = esc(self.user_ids.get(int(row["user"]), row["user"]))
        return (f'<article class="user" data-case="{case}"><h3>User {user} <span class="muted">test case {case}; '
                f"true next item: {esc(self.catalog.titles.get(target, target))}</span></h3>"
                f'<h4>History{esc(more)}</h4><div class="history">{"".join(map(self.item_card, shown))}</div>'
                f'{self.context(case)}<h4>Ranked candidates</h4><div class="rankings">'
                f'{"".join(self.ranking(m, case, target) for m in self.scores)}</div></article>')


def users_section(inputs: ReportInputs, data: dict, methods: list[str], notes: list[str]) -> str:
    """`methods`: the leaderboard's, in order; those with per-case test scores get a ranking column."""
    cfg = inputs.cfg
    cases = data["test"].reset_index(drop=True)
    n = min(cfg.evaluate.report_users, len(cases))
    if n == 0:
        return ""
    from ..index.context import read_keyword_table
    from ..llm.prompts import Catalog

    keywords = optional("keywords", lambda: read_keyword_table(inputs.keywords), notes) if inputs.keywords else None
    from ..rank.config import RankConfig

    # items as the ranker's prompts show them; without the ranker on the board, as the defaults would
    rank = cfg.rank if cfg.rank.name in cfg.evaluate.methods else RankConfig()
    catalog = Catalog.build(data["items"], keywords, keywords is not None, rank.max_keywords, rank.raw_text_words,
                            rank.history_keywords)
    items, users = data["items"], data["users"]
    view = UserView(catalog, dict(zip(items["item"].astype(int), items["item_id"].astype(str))),
                    dict(zip(users["user"].astype(int), users["user_id"].astype(str))), cfg.data.images,
                    ranker=cfg.rank.name)
    for method in methods:
        path = inputs.cases.get(method)
        if path is not None and path.is_file():
            frame = optional(f"{method} scores", lambda: pd.read_parquet(path), notes)
            if frame is not None:
                view.scores[method] = frame
    if not view.scores:
        notes.append("no per-case scores to show (the sampled protocol was not evaluated)")
    source = f"keywords from {inputs.keywords.parent.name}" if keywords is not None else "no keywords"
    picked = sorted(np.random.default_rng([cfg.seed, 2718]).choice(len(cases), n, replace=False).tolist())
    out = [f'<section id="users"><h2>Sampled test users</h2><p class="muted">{n} of {len(cases)} test cases, drawn '
           f"with seed {cfg.seed}; {esc(source)}; history oldest first.</p>"]
    out += [view.article(case, cases.iloc[case]) for case in picked]
    return "\n".join(out) + "</section>"


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}h4{margin:.8em 0 .3em}
table{border-collapse:collapse;margin:.4em 0 1em}th,td{border:1px solid #ddd;padding:2px 6px;text-align:right}
thead th{background:#f3f3f3}tbody th,td:nth-child(2){text-align:left}td.best{font-weight:bold}
.muted{color:#777;font-weight:normal}.small{font-size:.85em}.chart{max-width:100%;display:block}
.history{display:flex;flex-wrap:wrap;gap:6px}
.item{margin:0;width:130px;border:1px solid #ddd;border-radius:4px;padding:4px;font-size:.85em;overflow-wrap:anywhere}
.item img,.noimg{width:72px;height:72px;object-fit:contain;display:block;background:#f6f6f6}
.kw{color:#2a5d8f}.context{background:#f6f8fa;padding:.4em .6em;border-radius:4px}
.rankings{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}.ranking caption{text-align:left}
.ranking td:nth-child(2){max-width:260px;overflow-wrap:anywhere}.neighbours td:last-child{text-align:left}
tr.target td{background:#dff3df;font-weight:bold}
.user{border-top:2px solid #eee;margin-top:1em}.notes{color:#8a5a00}
"""


def render_report(inputs: ReportInputs) -> str:
    cfg = inputs.cfg
    data = load_prepared(inputs.prepare)
    board = read_json(inputs.evaluate / "leaderboard.json")
    notes: list[str] = []
    stats = data["stats"]
    body = [f"<h1>{esc(board.get('title', cfg.name))}</h1>",
            f'<p class="muted">run {esc(cfg.name)}, seed {esc(cfg.seed)}: {esc(stats.get("users"))} users, '
            f'{esc(stats.get("items"))} items, {esc(stats.get("interactions"))} interactions, '
            f'split {esc(stats.get("split"))}, {esc(stats.get("negatives_per_case"))} negatives per case. Ties are '
            "scored as the expected value under a random tie-break.</p>",
            leaderboard_section(board["rows"], inputs.evaluate / "leaderboard.png"),
            slices_section(inputs.evaluate, notes),
            curves_section(inputs.summarizer, notes),
            users_section(inputs, data, list(dict.fromkeys(r["method"] for r in board["rows"])), notes)]
    if notes:
        body.append('<section id="notes"><h2>Notes</h2><ul class="notes">'
                    + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul></section>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(cfg.name)} — mmsrarec report'
            '</title><meta name="viewport" content="width=device-width,initial-scale=1"><link rel="icon" href="data:,">'
            f"<style>{CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")
