#!/usr/bin/env python
"""Export RecBole 1.2.1's exact ML-100K leave-one-out split, so our side can check it uses the same one.

Runs inside experiments/recbole/.venv; no training (a few seconds):

    experiments/recbole/.venv/bin/python experiments/recbole/export_split.py [--out PATH]

Writes a TSV, one line per user, with the original ML-100K tokens:
    user_id <TAB> valid_item <TAB> test_item <TAB> items (space-separated, in RecBole's order)
where `items` is the user's whole sequence as RecBole orders it (the test item last, the valid item before
it), and prints how that order differs from sorting by the raw integer timestamp (ties by file line).

Why it can differ: RecBole min-max normalises the timestamp (normalize_all: True in its ml-100k.yaml) and
stores it as float32 before sorting, so timestamps about a second apart can become equal; equal keys keep
the .inter file's line order (np.argsort kind="stable" in Interaction.sort).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
HERE = Path(__file__).resolve().parent


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=HERE / "work" / "recbole_ml100k_split.tsv")
    p.add_argument("--max-len", type=int, default=50)
    args = p.parse_args()
    args.out = args.out.resolve()
    (HERE / "work").mkdir(exist_ok=True)
    os.chdir(HERE / "work")

    import torch

    torch.set_num_threads(1)
    import recbole.model.sequential_recommender  # noqa: F401
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    sys.argv = sys.argv[:1]  # RecBole's Config would also parse our command line
    config = Config(model="SASRec", dataset="ml-100k", config_dict={
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full",
                      "group_by": "user"},
        "MAX_ITEM_LIST_LENGTH": args.max_len, "loss_type": "CE", "train_neg_sample_args": None,
        "use_gpu": False, "state": "WARNING", "show_progress": False,
        "checkpoint_dir": str(HERE / "work" / "saved_export"),
    })
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    uid, iid = dataset.uid_field, dataset.iid_field
    lst = dataset.item_id_list_field
    u_tok = dataset.field2id_token[uid]
    i_tok = dataset.field2id_token[iid]

    def rows(dl):
        d = dl._dataset.inter_feat
        for u, target, seq, n in zip(d[uid].tolist(), d[iid].tolist(), d[lst].tolist(),
                                     d[dataset.item_list_length_field].tolist()):
            yield int(u_tok[u]), int(i_tok[target]), [int(i_tok[x]) for x in seq[:n]]

    valid_rows = {u: (t, s) for u, t, s in rows(valid)}
    test_rows = {u: (t, s) for u, t, s in rows(test)}
    # The test input is the last <=max_len items before the test target; rebuild the whole order from
    # the train targets (chronological within a user) plus each user's first item.
    train_targets = defaultdict(list)
    first_item = {}
    for u, t, s in rows(train):
        if not train_targets[u]:
            first_item[u] = s[0]
        train_targets[u].append(t)

    # Raw order: integer timestamp, ties by line order in the .inter file.
    raw = defaultdict(list)
    with open(Path(config["data_path"]) / "ml-100k.inter") as f:
        next(f)
        for line_no, line in enumerate(f):
            u, i, _r, ts = line.rstrip("\n").split("\t")
            raw[int(u)].append((int(float(ts)), line_no, int(i)))

    users = sorted(test_rows)
    n_same_last2, n_seq_diff, n_input_has_valid = 0, 0, 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as out:
        out.write("user_id\tvalid_item\ttest_item\titems\n")
        for u in users:
            vt, vs = valid_rows[u]
            tt, ts_ = test_rows[u]
            seq = [first_item[u]] + train_targets[u] + [vt, tt]
            assert ts_ == seq[:-1][-args.max_len:], u
            assert vs == seq[:-2][-args.max_len:], u
            n_input_has_valid += ts_[-1] == vt
            exact = [i for _, _, i in sorted(raw[u])]
            n_seq_diff += exact != seq
            n_same_last2 += exact[-2:] == seq[-2:]
            out.write(f"{u}\t{vt}\t{tt}\t{' '.join(map(str, seq))}\n")
    print(f"wrote {args.out}: {len(users)} users, {sum(len(v) for v in raw.values())} interactions")
    print(f"test input ends with the valid item: {n_input_has_valid}/{len(users)} users")
    print(f"users whose RecBole order differs from (int timestamp, file line) order: {n_seq_diff}")
    print(f"users whose (valid, test) items agree with that exact order: {n_same_last2}/{len(users)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
