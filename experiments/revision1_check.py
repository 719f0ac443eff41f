"""Would revision 1 of the stages (issue #28) change any output of the committed ML-100K GPU runs?

    mmsrarec summarize --config configs/ml100k_gpu.yaml --set runs_dir=/tmp/gpu_verify
    mmsrarec summarize-tuned --config configs/ml100k_gpu.yaml --set runs_dir=/tmp/gpu_verify
    python experiments/revision1_check.py /tmp/gpu_verify

On that rerun of their CPU stages (prepare, summarize, train-summarizer, summarize-tuned), with the code of
34705d6 (before #28) read from git for comparison:
1. the split's content digest equals the ledger's `data` column;
2. every item's title and text is unchanged by the prompt policy (untrusted.prompt_text vs the old clean_text);
3. re-parsing every raw model answer with the old and new parse_keywords gives the same keywords;
4. every stored keyword is unchanged by the new clean_text (old vs new);
5. GRPO's training items are the same with and without the training-interaction filter."""
import importlib.util
import re
import subprocess
import sys
import tempfile

import pandas as pd


from mmsrarec import ledger
from mmsrarec.config import load_config
from mmsrarec.untrusted import prompt_text
from mmsrarec.summarize.keywords import parse_keywords
from mmsrarec.summarize.grpo import split_items

BEFORE = "34705d6"
source = subprocess.run(["git", "show", f"{BEFORE}:src/mmsrarec/summarize/keywords.py"], capture_output=True,
                        text=True, check=True).stdout
with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
    fh.write(source)
spec = importlib.util.spec_from_file_location("mmsrarec.summarize.old_keywords", fh.name)
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
# llm/prompts.py's clean_text at 34705d6
_OLD_CONTROL = re.compile(r"<\|[^<>|]*\|>|</?s>|<image>|<fake_token_around_image>|<end_of_utterance>|@@CANDIDATE@@")


def old_clean(text: str) -> str:
    return " ".join(_OLD_CONTROL.sub(" ", text).split())



cfg = load_config("configs/ml100k_gpu.yaml", [f"runs_dir={sys.argv[1]}"])
run = cfg.run_dir
book = ledger.read("experiments/results/ml100k_gpu_ledger.csv")
digest = ledger.data_digest(run / "prepare")
print("1. data digest", digest, "ledger:", sorted(set(book["data"])), "equal:", set(book["data"]) == {digest})
items = pd.read_parquet(run / "prepare" / "items.parquet")
changed = [v for c in ("title", "text") for v in items[c].astype(str) if prompt_text(v) != old_clean(v)]
print("2. item texts changed by the prompt policy:", len(changed), "of", 2 * len(items))
for stage in ("summarize", "summarize-tuned"):
    kw = pd.read_parquet(run / stage / "keywords.parquet")
    raw_cols = [c for c in kw.columns if "raw" in c]
    n = diff = 0
    for c in raw_cols:
        for v in kw[c]:
            for answer in (v if isinstance(v, (list, tuple)) or hasattr(v, "tolist") else [v]):
                if answer is None:
                    continue
                n += 1
                m = cfg.summarize.max_keywords
                diff += old.parse_keywords(str(answer), m) != parse_keywords(str(answer), m)
    words = [str(k) for ks in kw["keywords"] for k in ks]
    kdiff = sum(prompt_text(k) != old_clean(k) for k in words)
    print(f"3/4. {stage}: raw answers {n} (columns {raw_cols}), parsed differently: {diff}; keywords {len(words)}, "
          f"changed by the prompt policy: {kdiff}")
prep = run / "prepare"
tr = pd.read_parquet(prep / "train.parquet")
seen = {int(i) for s in tr["items"] for i in s}
a, _ = split_items(items, cfg.train_summarizer, cfg.seed)
b, _ = split_items(items, cfg.train_summarizer, cfg.seed, trainable=seen)
print("5. GRPO training items equal:", a["item"].tolist() == b["item"].tolist(), len(a), len(b))
