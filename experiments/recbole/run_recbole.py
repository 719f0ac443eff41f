#!/usr/bin/env python
"""Reference run of RecBole 1.2.1 SASRec / GRU4Rec on ML-100K, one model and one seed per call.

Runs inside experiments/recbole/.venv (made by setup_venv.sh), never in mmsrarec's environment:

    experiments/recbole/.venv/bin/python experiments/recbole/run_recbole.py --model SASRec --seed 0 \
        --epochs 300 --max-minutes 30 --train-batch-size 2048

Protocol (the one our side is compared on): RecBole's bundled ML-100K atomic copy with RecBole's default
ml-100k filtering (none: see README), chronological leave-one-out per user (eval_args LS valid_and_test,
order TO), full ranking over all items, MAX_ITEM_LIST_LENGTH 50, CE loss without negative sampling,
metrics Recall/NDCG/MRR/Hit @ 5/10/20, early stopping on valid NDCG@10 with patience 10.

It mirrors recbole.quick_start.run_recbole step by step, adding: per-epoch timings, a wall-clock cap on
training, torch.set_num_threads, anomaly detection off (RecBole's SINE module turns it on globally at
import), and a JSON result per run: results/recbole_<model>_seed<seed>.json (and a .log beside it).

--probe-batches N trains only N batches (no result JSON for the benchmark; writes
probe_<model>_bs<batch>.json) to estimate the epoch time cheaply.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import platform
import shutil
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

# torch >= 2.6 loads checkpoints with weights_only=True by default and refuses RecBole's best-model
# checkpoint (it pickles the config); RecBole 1.2.1 calls torch.load without weights_only.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
# ray 2.6 imports pkg_resources, which warns on every import; not ours to fix.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

HERE = Path(__file__).resolve().parent
MODELS = ("SASRec", "GRU4Rec")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=300, help="max epochs (RecBole default 300)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall-clock cap on training (fit): no new epoch starts once it has passed, "
                        "so a run can overshoot by at most one epoch + one validation")
    p.add_argument("--train-batch-size", type=int, default=2048, help="RecBole default 2048")
    p.add_argument("--eval-batch-size", type=int, default=4096, help="RecBole default 4096")
    p.add_argument("--stopping-step", type=int, default=10)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--out-dir", type=Path, default=HERE / "results")
    p.add_argument("--work-dir", type=Path, default=HERE / "work",
                   help="RecBole writes log/, log_tensorboard/ and checkpoints relative to the cwd; "
                        "we chdir here")
    p.add_argument("--progress", action="store_true", help="RecBole's per-batch tqdm bars")
    p.add_argument("--keep-checkpoint", action="store_true")
    p.add_argument("--probe-batches", type=int, default=0,
                   help="only time this many training batches (plus one validation pass)")
    return p.parse_args(argv)


def versions():
    out = {"python": platform.python_version()}
    for name in ("recbole", "torch", "numpy", "pandas", "scipy", "scikit-learn", "ray", "tensorboard",
                 "thop"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=float) + "\n")
    os.replace(tmp, path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _FirstBatches:
    """A stand-in for RecBole's train DataLoader that yields only its first n batches."""

    def __init__(self, loader, n):
        self.loader, self.n = loader, n
        self.shuffle = loader.shuffle

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n)

    def __len__(self):
        return min(self.n, len(self.loader))


def main(argv=None) -> int:
    args = parse_args(argv)
    t_script = time.perf_counter()
    load_start = os.getloadavg()

    import torch

    torch.set_num_threads(args.threads)

    # Import every model package first: recbole/model/sequential_recommender/sine.py runs
    # torch.autograd.set_detect_anomaly(True) at import time, for all models (~20% slower).
    import recbole
    import recbole.model.sequential_recommender  # noqa: F401
    import recbole.trainer.trainer as rb_trainer
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.data.transform import construct_transform
    from recbole.utils import get_flops, get_model, get_trainer, init_logger, init_seed, set_color

    torch.autograd.set_detect_anomaly(False)

    args.out_dir = args.out_dir.resolve()
    args.work_dir = args.work_dir.resolve()
    run_name = f"recbole_{args.model}_seed{args.seed}"
    if args.probe_batches:
        run_name = f"probe_{args.model}_bs{args.train_batch_size}"
    ckpt_dir = args.work_dir / "saved" / f"{run_name}_{os.getpid()}"
    args.work_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(args.work_dir)

    data_root = Path(recbole.__file__).resolve().parent / "dataset_example"
    config_dict = {
        # data: RecBole's bundled atomic ML-100K. (For dataset "ml-100k" RecBole 1.2.1's
        # Config._set_default_parameters forces data_path to this directory anyway.)
        "data_path": str(data_root),
        # protocol
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full",
                      "group_by": "user"},
        "MAX_ITEM_LIST_LENGTH": 50,
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "metrics": ["Recall", "NDCG", "MRR", "Hit"],
        "topk": [5, 10, 20],
        "valid_metric": "NDCG@10",
        "stopping_step": args.stopping_step,
        # budget
        "epochs": args.epochs,
        "train_batch_size": args.train_batch_size,
        "eval_batch_size": args.eval_batch_size,
        # environment
        "seed": args.seed,
        "reproducibility": True,
        "use_gpu": False,
        "show_progress": args.progress,
        "checkpoint_dir": str(ckpt_dir),
        "save_dataset": False,
        "save_dataloaders": False,
        "log_wandb": False,
    }
    # RecBole's Config also reads `--key=value` pairs from sys.argv (Config._load_cmd_line) and lets them
    # override config_dict; hide our own command line from it.
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        config = Config(model=args.model, dataset="ml-100k", config_dict=config_dict)
    finally:
        sys.argv = argv
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = logging.getLogger()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(args.out_dir / f"{run_name}.log", mode="w")
    fh.setFormatter(logging.Formatter("%(asctime)-15s %(levelname)s  %(message)s"))
    fh.setLevel(logging.INFO)
    logger.addHandler(fh)
    logger.info(sys.argv)
    logger.info(config)

    inter_file = Path(config["data_path"]) / "ml-100k.inter"
    with open(inter_file) as f:
        raw_inter = sum(1 for _ in f) - 1

    t_data = time.perf_counter()
    dataset = create_dataset(config)
    logger.info(dataset)
    # Stats after RecBole's filtering, before the sequential augmentation done in data_preparation.
    data_stats = {
        "data_path": str(config["data_path"]),
        "inter_file_sha256": sha256(inter_file),
        "raw_interactions": raw_inter,
        "users": dataset.user_num - 1,  # RecBole's id 0 is [PAD]
        "items": dataset.item_num - 1,
        "interactions": dataset.inter_num,
        "avg_actions_of_users": float(dataset.avg_actions_of_users),
        "sparsity": float(dataset.sparsity),
        "filtering": {k: config[k] for k in (
            "rm_dup_inter", "val_interval", "filter_inter_by_user_or_item",
            "user_inter_num_interval", "item_inter_num_interval", "threshold", "load_col")},
    }
    train_data, valid_data, test_data = data_preparation(config, dataset)
    data_s = time.perf_counter() - t_data
    samples = {
        "train_samples_per_epoch": len(train_data._dataset),
        "train_batches_per_epoch": len(train_data),
        "valid_cases": len(valid_data._dataset),
        "test_cases": len(test_data._dataset),
        "ranked_items": dataset.item_num - 1,
    }
    logger.info(f"samples: {samples}")

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    n_params = sum(p.numel() for p in model.parameters())
    try:
        transform = construct_transform(config)
        flops = get_flops(model, dataset, config["device"], logger, transform)
        logger.info(set_color("FLOPs", "blue") + f": {flops}")
    except Exception as e:  # thop is only for the log line; never fail the run on it
        flops = None
        logger.warning(f"get_flops failed: {e!r}")

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)

    # --- instrumentation: per-epoch timings and a wall-clock cap, without changing RecBole's loop ---
    state = {"epochs": [], "best_epoch": None, "stopped_by": "max_epochs", "fit_start": None}
    cap_s = args.max_minutes * 60 if args.max_minutes else None
    orig_train_epoch, orig_valid_epoch = trainer._train_epoch, trainer._valid_epoch
    orig_early_stopping = rb_trainer.early_stopping

    def timed_train_epoch(train_data, epoch_idx, *a, **kw):
        t, c = time.perf_counter(), time.process_time()
        loss = orig_train_epoch(train_data, epoch_idx, *a, **kw)
        state["epochs"].append({"epoch": epoch_idx, "train_s": round(time.perf_counter() - t, 3),
                                # CPU seconds of all our threads: less sensitive to a shared machine
                                "train_cpu_s": round(time.process_time() - c, 3),
                                "train_loss": float(sum(loss) if isinstance(loss, tuple) else loss),
                                "loadavg_1m": round(os.getloadavg()[0], 2)})
        return loss

    def timed_valid_epoch(valid_data, *a, **kw):
        t = time.perf_counter()
        score, result = orig_valid_epoch(valid_data, *a, **kw)
        if state["epochs"]:
            state["epochs"][-1].update(valid_s=round(time.perf_counter() - t, 3),
                                       valid_ndcg10=float(score))
        return score, result

    def early_stopping_with_cap(value, best, cur_step, max_step, bigger=True):
        best, cur_step, stop_flag, update_flag = orig_early_stopping(
            value, best, cur_step, max_step, bigger=bigger)
        if update_flag and state["epochs"]:
            state["best_epoch"] = state["epochs"][-1]["epoch"]
        if stop_flag:
            state["stopped_by"] = "early_stopping"
        elif cap_s is not None and time.perf_counter() - state["fit_start"] >= cap_s:
            logger.info(f"wall-clock cap of {args.max_minutes} min reached: stopping after this epoch")
            state["stopped_by"] = "wall_clock_cap"
            stop_flag = True
        return best, cur_step, stop_flag, update_flag

    trainer._train_epoch, trainer._valid_epoch = timed_train_epoch, timed_valid_epoch
    rb_trainer.early_stopping = early_stopping_with_cap

    common = {
        "model": args.model,
        "seed": args.seed,
        "config": {
            "train_batch_size": args.train_batch_size, "eval_batch_size": args.eval_batch_size,
            "max_epochs": args.epochs, "max_minutes": args.max_minutes,
            "stopping_step": args.stopping_step, "valid_metric": "NDCG@10",
            "learning_rate": config["learning_rate"], "MAX_ITEM_LIST_LENGTH": 50,
            "loss_type": config["loss_type"], "eval_args": config["eval_args"],
            "model_hparams": {k: config[k] for k in (
                "hidden_size", "embedding_size", "n_layers", "n_heads", "inner_size", "num_layers",
                "hidden_dropout_prob", "attn_dropout_prob", "dropout_prob")
                if config[k] is not None},
        },
        "n_parameters": n_params,
        "flops": flops,
        "threads": torch.get_num_threads(),
        "anomaly_detection": torch.is_anomaly_enabled(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": load_start,
        "versions": versions(),
        "data": data_stats,
        **samples,
        "data_prep_s": round(data_s, 3),
    }
    assert not torch.is_anomaly_enabled()

    if args.probe_batches:
        n = args.probe_batches
        trainer.model.train()
        t, c = time.perf_counter(), time.process_time()
        orig_train_epoch(_FirstBatches(train_data, n), 0, show_progress=args.progress)
        train_s, train_cpu_s = time.perf_counter() - t, time.process_time() - c
        t = time.perf_counter()
        score, _ = orig_valid_epoch(valid_data, show_progress=False)
        valid_s = time.perf_counter() - t
        per_batch = train_s / min(n, len(train_data))
        out = {**common, "probe_batches": min(n, len(train_data)), "probe_train_s": round(train_s, 3),
               "s_per_batch": round(per_batch, 4),
               "est_epoch_train_s": round(per_batch * len(train_data), 1),
               "probe_train_cpu_s": round(train_cpu_s, 3),
               "est_epoch_train_cpu_s": round(train_cpu_s / min(n, len(train_data)) * len(train_data), 1),
               "valid_pass_s": round(valid_s, 3), "loadavg_end": os.getloadavg()}
        logger.info(f"probe: {json.dumps(out)}")
        write_json(args.out_dir / f"{run_name}.json", out)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        return 0

    state["fit_start"] = time.perf_counter()
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=True, show_progress=config["show_progress"])
    fit_s = time.perf_counter() - state["fit_start"]

    t = time.perf_counter()
    test_result = trainer.evaluate(test_data, load_best_model=True,
                                   show_progress=config["show_progress"])
    test_s = time.perf_counter() - t
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")

    epochs = state["epochs"]
    result = {
        **common,
        "epochs_run": len(epochs),
        "best_epoch": state["best_epoch"],
        "stopped_by": state["stopped_by"],
        "best_valid_ndcg@10": float(best_valid_score),
        "best_valid": {k: float(v) for k, v in (best_valid_result or {}).items()},
        # RecBole's keys: hit@K is HR@K (one positive per case).
        "test": {k: float(v) for k, v in test_result.items()},
        "train_wall_s": round(fit_s, 3),  # trainer.fit: training + per-epoch validation
        "train_epochs_s": round(sum(e["train_s"] for e in epochs), 3),
        "valid_epochs_s": round(sum(e.get("valid_s", 0.0) for e in epochs), 3),
        "mean_epoch_train_s": round(sum(e["train_s"] for e in epochs) / max(len(epochs), 1), 3),
        "train_epochs_cpu_s": round(sum(e["train_cpu_s"] for e in epochs), 3),
        "test_eval_s": round(test_s, 3),
        "total_wall_s": round(time.perf_counter() - t_script, 3),
        "per_epoch": epochs,
        "loadavg_end": os.getloadavg(),
    }
    out_path = args.out_dir / f"{run_name}.json"
    write_json(out_path, result)
    logger.info(f"wrote {out_path}")
    if not args.keep_checkpoint:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
