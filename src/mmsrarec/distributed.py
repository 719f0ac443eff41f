"""Multi-process runs (`accelerate launch ... -m mmsrarec <stage>`): which process is the main one,
and waiting for the others.

The stages marked Stage.distributed in pipeline.py run on every process: the training stages
(train-summarizer, train-ranker), as TRL's trainers expect under DDP, FSDP2 or DeepSpeed, and the
summarize stages, which split the items (mmsrarec.sharding). Every other stage runs on the main
process while the others wait. Only the main process writes manifests and renames stage folders. Without a launcher (WORLD_SIZE unset or 1)
every helper here is a no-op and accelerate's state is never touched.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

# The other processes wait at a barrier while the main one runs a whole non-distributed stage
# (summarizing every item can take hours on CPU); torch's default of 30 minutes would kill them.
WAIT_TIMEOUT = timedelta(hours=12)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    """True under accelerate launch / torchrun with more than one process."""
    return world_size() > 1


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def _state() -> Any:
    """accelerate's PartialState, created the way the trainers will (TrainingArguments builds its own
    with cpu=use_cpu; ours must agree, or on a CPU-only host accelerate would see no backend and never
    join the process group). The process group it creates, with WAIT_TIMEOUT, is the one the trainers use."""
    import torch
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    check_launch(cpu)
    return PartialState(cpu=cpu, timeout=WAIT_TIMEOUT)


def check_launch(cpu: bool) -> None:
    """Refuse a launch config this machine would not honour. accelerate turns FSDP on only for GPU
    process groups (AcceleratorState: distributed_type MULTI_GPU and the like); a CPU group is MULTI_CPU,
    so an FSDP launch on CPU would quietly train as plain DDP. (DeepSpeed ZeRO runs on CPU too.)"""
    if cpu and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        from .errors import MmsrarecError

        raise MmsrarecError("the accelerate config asks for FSDP, which accelerate enables on GPUs only: on this "
                            "CPU run it would silently train as plain DDP. Use configs/accelerate/ddp.yaml, or "
                            "zero2.yaml / zero3.yaml (DeepSpeed shards on CPU too), or run on GPUs")


def join() -> bool:
    """Join the process group of a multi-process launch (checking its config); False when run alone."""
    if launched():
        _state()
    return launched()


def barrier() -> None:
    """Wait until every process gets here."""
    if launched():
        _state().wait_for_everyone()


def broadcast(value: Any) -> Any:
    """The main process's `value` (any picklable object), on every process."""
    if not launched():
        return value
    from accelerate.utils import broadcast_object_list

    _state()
    return broadcast_object_list([value], from_process=0)[0]


def after_training() -> None:
    """Call once a trainer is done. Under ZeRO-3, transformers keeps DeepSpeed's config globally and
    turns every later from_pretrained into a collective deepspeed.zero.Init: a model loaded by one
    process alone (the held-out scoring) would hang, and one loaded by all (the summarize stages)
    would come back sharded."""
    try:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config
    except ImportError:
        return
    unset_hf_deepspeed_config()


def leave() -> None:
    """Tear the process group down before the interpreter exits, as torch asks: left to exit-time
    destructors, gloo's threads can abort a process whose work is done ("terminate called without an
    active exception", seen once in a ZeRO-3 CPU test run). Local to this process: no collective."""
    if not launched():
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
