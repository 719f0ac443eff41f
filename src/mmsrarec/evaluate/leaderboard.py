"""Leaderboard files: one row per method x protocol, as Markdown, CSV, JSON and a PNG chart.

The sampled protocol has two AUCs (evaluate/metrics.py): `auc`, pooled over all test rows as in the papers,
and `gauc`, the mean of per-case AUCs; every file shows both, under those names. With the slices of the cases
(evaluate/slices.py), leaderboard.md ends with a "Slices" section and slices.png charts them."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..artifacts import atomic_write_bytes, write_json, write_text
from .slices import WHAT, panel, shown_metric

KEY_METRICS = {"sampled": ["hr@1", "hr@5", "ndcg@5", "hr@10", "ndcg@10", "mrr", "auc", "gauc"],
               "full": ["hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr@20"],
               "rerank": ["hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr@20"]}


def to_markdown(board: pd.DataFrame, title: str, stats: dict | None = None) -> str:
    lines = [f"# Leaderboard — {title}", ""]
    lines += [
        "Ties are scored as the expected value under a random tie-break (see mmsrarec.evaluate.metrics).",
        "`sampled`: the stored 1 + N candidate lists; `full`: all items except the case's history;",
        "`rerank`: an LLM ranker reorders a CF model's top items from the full ranking (a target outside them is a "
        "miss).",
        "Model selection (early stopping) used the valid split only."]
    if any(f"test_{m}" in board for m in ("auc", "gauc")):
        lines += AUC_LINES
    lines.append("")
    for protocol, part in board.groupby("protocol", sort=False):
        metrics = [m for m in KEY_METRICS.get(protocol, [])
                   if f"test_{m}" in part and part[f"test_{m}"].notna().any()]
        if not metrics:  # e.g. a rerank of 5 items reports only @1: whatever metrics the rows have
            metrics = [c[len("test_"):] for c in part.columns
                       if re.fullmatch(r"test_(hr|ndcg|mrr)(@\d+)?|test_g?auc", c) and part[c].notna().any()]
        if not metrics:
            continue
        lines.append(f"## {protocol} ({int(part['test_cases'].iloc[0])} test cases)")
        lines.append("")
        header = ["method"] + [f"test {m}" for m in metrics] + ["valid " + metrics[min(3, len(metrics) - 1)],
                                                                 "train s", "peak MB"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        ranked = part.sort_values(f"test_{metrics[min(3, len(metrics) - 1)]}", ascending=False)
        for _, r in ranked.iterrows():
            cells = [method_cell(r)] + ["" if pd.isna(r[f"test_{m}"]) else f"{r[f'test_{m}']:.4f}" for m in metrics]
            valid = r.get("valid_" + metrics[min(3, len(metrics) - 1)])
            cells.append("" if valid is None or pd.isna(valid) else f"{valid:.4f}")
            cells.append("" if pd.isna(r.get("train_time_s")) else f"{r['train_time_s']:.1f}")
            cells.append("" if pd.isna(r.get("peak_rss_mb")) else f"{r['peak_rss_mb']:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        missing = [str(r["method"]) for _, r in ranked.iterrows() if isinstance(r.get("auc_missing"), str)]
        if missing:
            lines += [f"No pooled auc for {', '.join(missing)}: their case files hold no scores (rescore them).", ""]
        lines += sureness(ranked)
    return "\n".join(lines)


AUC_LINES = [
    "Two AUCs on the sampled lists: `auc` is one ROC AUC pooled over all test rows (every case's target labelled 1, "
    "all its sampled negatives 0, ties 1/2), as in the papers (MMSRARec, MLLM-MSR); `gauc` is the mean of per-case "
    "AUCs (each target against its own negatives).",
    "`auc` compares scores across cases, so it means something only for scores on one scale (a probability, say); "
    "for scores that are not (a CF model's dot products, a blend of per-case z-scores) `gauc` is the one to read."]


def sureness(part: pd.DataFrame) -> list[str]:
    """How sure a protocol's table is: each row's 95% bootstrap interval over the test cases, and its paired
    difference to the best CF model by valid among those its run scored (evaluate/stage.py), named per row."""
    metrics = [c[len("test_"):-len("_lo")] for c in part.columns if c.startswith("test_") and c.endswith("_lo")
               and not c.endswith("_diff_lo") and part[c].notna().any()]
    if not metrics:
        return []
    diffs = [m for m in metrics if f"test_{m}_diff" in part and part[f"test_{m}_diff"].notna().any()]
    header = ["method", *(f"{m} (95%)" for m in metrics), *(["paired with"] if diffs else []),
              *(f"{m} minus it (95%)" for m in diffs)]
    lines = [f"95% bootstrap intervals over the {int(part['test_cases'].iloc[0])} test cases"
             + ("; differences paired case by case with the best CF model by valid" if diffs else "") + ".", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in part.iterrows():
        cells = [method_cell(r)]
        cells += [f"{r[f'test_{m}']:.4f} [{r[f'test_{m}_lo']:.4f}, {r[f'test_{m}_hi']:.4f}]"
                  if pd.notna(r.get(f"test_{m}_lo")) else "" for m in metrics]
        if diffs:
            paired = r.get("vs_cf")
            cells.append("" if paired is None or pd.isna(paired) else str(paired))
        cells += [f"{r[f'test_{m}_diff']:+.4f} [{r[f'test_{m}_diff_lo']:+.4f}, {r[f'test_{m}_diff_hi']:+.4f}]"
                  if pd.notna(r.get(f"test_{m}_diff")) else "" for m in diffs]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def method_cell(row) -> str:
    """The method's name, with the blend weight of an evaluate.fuse row (picked on valid; ± its standard
    deviation on an experiment's board of several seeds)."""
    weight, std = row.get("fuse_weight"), row.get("fuse_weight_std")
    if weight is None or pd.isna(weight):
        return str(row["method"])
    return f"{row['method']} (weight {weight:.2f}" + ("" if std is None or pd.isna(std) else f" ± {std:.2f}") + ")"


def _chart_metric(part: pd.DataFrame, protocol: str) -> str:
    """NDCG@5 for sampled, NDCG@10 otherwise, or the largest NDCG cut-off the rows have (a rerank
    over fewer than 11 items reports no NDCG@10)."""
    preferred = "ndcg@5" if protocol == "sampled" else "ndcg@10"
    if f"test_{preferred}" in part and part[f"test_{preferred}"].notna().any():
        return preferred
    cuts = sorted((int(c.split("@")[1]), c[5:]) for c in part.columns
                  if c.startswith("test_ndcg@") and part[c].notna().any())
    return cuts[-1][1] if cuts else preferred


def _chart_panels(board: pd.DataFrame) -> list[tuple[str, str]]:
    """(protocol, metric) of each panel of the chart: every protocol's NDCG (_chart_metric), and the sampled
    protocol's two AUCs, pooled (`auc`) and per case (`gauc`), where its rows have them."""
    panels = []
    for protocol in dict.fromkeys(board["protocol"]):
        part = board[board["protocol"] == protocol]
        panels.append((protocol, _chart_metric(part, protocol)))
        panels += [(protocol, m) for m in ("auc", "gauc") if protocol == "sampled" and f"test_{m}" in part
                   and part[f"test_{m}"].notna().any()]
    return panels


def plot(board: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import io
    import matplotlib.pyplot as plt

    panels = _chart_panels(board)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
    for ax, (protocol, metric) in zip(axes[0], panels):
        part = board[board["protocol"] == protocol]
        part = part.dropna(subset=[f"test_{metric}"]).sort_values(f"test_{metric}")
        ax.barh(part["method"], part[f"test_{metric}"], color="#4c72b0")
        for y, v in enumerate(part[f"test_{metric}"]):
            ax.text(v, y, f" {v:.3f}", va="center", fontsize=8)
        named = {"auc": "AUC (pooled)", "gauc": "GAUC (mean per case)"}.get(metric, metric.upper())
        ax.set_title(f"{protocol}: test {named}")
        ax.set_xlim(0, max(float(part[f"test_{metric}"].max()) * 1.25 if len(part) else 0.0, 1e-3))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


SLICE_LINES = [
    "Every row again on slices of the test cases: by the target's popularity in training (times it occurs in the "
    "training sequences; evaluate.popularity_buckets) and by the case's history length (evaluate.history_buckets).",
    "Each cell: the slice's test metric with its 95% bootstrap interval over the slice's cases; each difference is "
    "paired case by case with the best CF model on the slice's valid cases (marked * where the slice has fewer "
    "than 10 valid cases or the CF models tie on them, as at chance on never-seen targets: the best by all of "
    "valid). Every headline metric, and the valid values, are in slices.csv/.json."]


def interval_text(r: dict | None, key: str = "value", sign: str = "") -> str:
    lo, hi = ("diff_lo", "diff_hi") if key == "diff" else ("lo", "hi")
    if r is None or r.get(key) is None or pd.isna(r.get(key)):
        return ""
    if r.get(lo) is None or pd.isna(r.get(lo)):
        return f"{r[key]:{sign}.4f}"
    return f"{r[key]:{sign}.4f} [{r[lo]:{sign}.4f}, {r[hi]:{sign}.4f}]"


def slice_tables(table: pd.DataFrame, order: dict[str, list[str]]):
    """Per protocol (in row order) and slicing: (protocol, slicing, metric, slice labels, methods, cells,
    the CF model each slice is paired with (name, "*" when picked on all of valid), cases per slice) of what
    slice tables and charts show (one metric per protocol: slices.shown_metric)."""
    for protocol in dict.fromkeys(table.loc[table["split"] == "test", "protocol"]):
        metric = shown_metric(table, protocol)
        for slicing in order:
            labels, methods, cells = panel(table, protocol, slicing, metric, order[slicing])
            if not labels:
                continue
            paired = {}
            for label in labels:
                named = [(r["vs_cf"], r["vs_cf_from"]) for m in methods if (r := cells.get((label, m)))
                         and isinstance(r.get("vs_cf"), str)]
                paired[label] = "" if not named else named[0][0] + ("*" if named[0][1] == "overall" else "")
            cases = {label: max(int(cells[(label, m)]["cases"]) for m in methods if (label, m) in cells)
                     for label in labels}
            yield protocol, slicing, metric, labels, methods, cells, paired, cases


def slices_markdown(table: pd.DataFrame, order: dict[str, list[str]]) -> list[str]:
    """leaderboard.md's "Slices" section: per protocol and slicing, each method's test metric with its interval
    per slice, then its paired difference to the slice's best CF model."""
    lines = ["## Slices", "", *SLICE_LINES, ""]
    shown = False
    for protocol, slicing, metric, labels, methods, cells, paired, cases in slice_tables(table, order):
        shown = True
        lines += [f"### {protocol}: test {metric} by {WHAT[slicing]}", "",
                  "| slice | cases | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 2)]
        for label in labels:
            row = [label, str(cases[label])]
            for m in methods:
                r = cells.get((label, m))
                text = interval_text(r)
                if r is not None and int(r["cases"]) < cases[label]:
                    text += f" (n={int(r['cases'])})"
                row.append(text)
            lines.append("| " + " | ".join(row) + " |")
        diffs = [m for m in methods if any(pd.notna((cells.get((label, m)) or {}).get("diff")) for label in labels)]
        if diffs:
            lines += ["", "| slice | paired with | " + " | ".join(f"{m} minus it" for m in diffs) + " |",
                      "|" + "---|" * (len(diffs) + 2)]
            lines += ["| " + " | ".join([label, paired[label], *(interval_text(cells.get((label, m)), "diff", "+")
                                                              for m in diffs)]) + " |" for label in labels]
        lines.append("")
    return lines if shown else []


def plot_slices(table: pd.DataFrame, order: dict[str, list[str]], path: Path) -> bool:
    """slices.png: per protocol (a row of panels) and slicing (a column), each method's test metric per slice as
    grouped bars with their 95% intervals. False (and no file) when there is nothing to draw."""
    panels = list(slice_tables(table, order))
    if not panels:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import io
    import matplotlib.pyplot as plt
    import numpy as np

    protocols = list(dict.fromkeys(p[0] for p in panels))
    slicings = list(dict.fromkeys(p[1] for p in panels))
    fig, axes = plt.subplots(len(protocols), len(slicings), figsize=(6.5 * len(slicings), 3.6 * len(protocols)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_visible(False)
    for protocol, slicing, metric, labels, methods, cells, _, cases in panels:
        ax = axes[protocols.index(protocol)][slicings.index(slicing)]
        ax.set_visible(True)
        width = 0.8 / len(methods)
        x = np.arange(len(labels))
        for j, m in enumerate(methods):
            rs = [cells.get((label, m)) for label in labels]
            value = np.array([np.nan if r is None else float(r["value"]) for r in rs])
            lo = np.array([np.nan if r is None or pd.isna(r.get("lo")) else float(r["lo"]) for r in rs])
            hi = np.array([np.nan if r is None or pd.isna(r.get("hi")) else float(r["hi"]) for r in rs])
            err = np.nan_to_num(np.vstack([value - lo, hi - value]).clip(min=0))
            ax.bar(x + (j - (len(methods) - 1) / 2) * width, np.nan_to_num(value), width, yerr=err, capsize=2,
                   label=m, error_kw={"elinewidth": 0.8})
        ax.set_xticks(x, [f"{label}\n({cases[label]})" for label in labels], fontsize=8)
        ax.set_xlabel(f"{slicing} slice (test cases)", fontsize=8)
        ax.set_title(f"{protocol}: test {metric.upper()} by {slicing} (95% intervals)", fontsize=9)
        top = np.nanmax(np.concatenate([[1e-3], *([float(r["hi"] if pd.notna(r.get("hi")) else r["value"])]
                                                     for r in cells.values())]))
        ax.set_ylim(0, top * 1.3)  # room for the legend above the bars
        ax.legend(fontsize=7, ncol=min(len(methods), 4), loc="upper center")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return True


def write_leaderboard(board: pd.DataFrame, out: Path, title: str, stats: dict | None = None,
                      slices: tuple[pd.DataFrame, dict[str, list[str]]] | None = None) -> None:
    """leaderboard.{md,csv,json,png}; with `slices` (slices.py's table, and each slicing's labels in bucket
    order), the md's "Slices" section and slices.png."""
    md = to_markdown(board, title, stats)
    if slices is not None:
        md = "\n".join([md.rstrip("\n"), "", *slices_markdown(*slices)])
        plot_slices(*slices, out / "slices.png")
    write_text(out / "leaderboard.md", md)
    write_text(out / "leaderboard.csv", board.to_csv(index=False, float_format="%.6f"))
    write_json(out / "leaderboard.json", {"title": title, "rows": board.to_dict(orient="records")})
    plot(board, out / "leaderboard.png")
