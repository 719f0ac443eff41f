"""One process of a multi-process test run: the mmsrarec CLI (what `-m mmsrarec` runs), plus a record
of what this process trained, for tests/test_distributed.py.

    accelerate launch --config_file configs/accelerate/ddp.yaml tests/distributed_worker.py RECORD_DIR \
        train-ranker --config X --set ...

Around every Trainer.train (GRPO and SFT alike) it writes RECORD_DIR/<Trainer class>-rank<r>.json with
a digest of the trainable (LoRA) weights before and after training, gathered in full under FSDP2 and
ZeRO-3, and the per-step throughput the trainer measured.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path


def canonical_name(name: str) -> str:
    """A parameter's name as a saved PEFT adapter spells it (no wrapper prefixes, no adapter name)."""
    for prefix in ("module.", "_orig_mod."):
        name = name.removeprefix(prefix)
    return name.replace("._fsdp_wrapped_module", "").replace(".default.", ".")


def full_tensor(param):
    """The whole parameter on this process: DTensor shards (FSDP2) or ZeRO-3 partitions are gathered."""
    if hasattr(param, "full_tensor"):
        return param.full_tensor()
    if hasattr(param, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([param]):
            return param.data.detach().clone()
    return param.detach()


def weights_digest(tensors: dict) -> str:
    """sha256 over (name, float32 bytes) in name order; the same for a model and its saved adapter."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def trainable(model) -> dict:
    return {canonical_name(n): full_tensor(p) for n, p in model.named_parameters() if p.requires_grad}


def install(record_dir: Path) -> None:
    import transformers

    real_train = transformers.Trainer.train

    def train(self, *args, **kwargs):
        before = weights_digest(trainable(self.model))
        result = real_train(self, *args, **kwargs)
        after = weights_digest(trainable(self.model))  # FSDP2 and ZeRO-3 shard these parameters in place
        record = {"rank": int(os.environ.get("RANK", "0")), "world": int(os.environ.get("WORLD_SIZE", "1")),
                  "before": before, "after": after, "steps": self.state.global_step,
                  "distributed_type": str(self.accelerator.distributed_type),
                  "train_runtime_s": result.metrics.get("train_runtime")}
        path = record_dir / f"{type(self).__name__}-rank{record['rank']}.json"
        path.write_text(json.dumps(record, indent=1))
        return result

    transformers.Trainer.train = train


if __name__ == "__main__":
    record_dir = Path(sys.argv[1])
    record_dir.mkdir(parents=True, exist_ok=True)
    install(record_dir)
    from mmsrarec.cli import main

    sys.exit(main(sys.argv[2:]))
