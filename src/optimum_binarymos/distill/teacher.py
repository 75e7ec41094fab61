"""Getting the frozen teacher ready on every process, whatever the distributed setup.

* A teacher spread over devices with ``device_map`` stays where it is (naive model parallelism, as the
  BinaryMoS authors ran it).
* One process or DDP: the teacher is frozen, put in eval mode, cast to the student's dtype and moved to the
  training device; it is never wrapped in DDP (it has no gradients to synchronize, and every process holds
  a full copy). Its forward runs under the trainer's autocast.
* FSDP (version 2): the teacher is sharded like the student, with ``fully_shard`` on each decoder layer as
  the accelerate FSDP plugin says, so a teacher that does not fit on one device is spread over all of them.
* DeepSpeed: the teacher gets its own inference engine; under ZeRO-3 its parameters are partitioned like
  the student's, under stages 0-2 every process holds a full copy (ZeRO below 3 shards only optimizer state
  and gradients, which a teacher does not have).
"""

from __future__ import annotations

import copy
import logging

import torch
from accelerate import Accelerator
from torch import nn

logger = logging.getLogger(__name__)


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """``requires_grad=False`` on every parameter and eval mode (no dropout), in place."""
    teacher.requires_grad_(False)
    return teacher.eval()


def prepare_teacher(teacher: nn.Module, accelerator: Accelerator, dtype: torch.dtype | None) -> nn.Module:
    """Freeze ``teacher`` and place it for the accelerator's distributed setup (see the module docstring).

    Args:
        teacher: the float model, on any device.
        accelerator: the trainer's accelerator (its state says DDP, FSDP or DeepSpeed).
        dtype: floating dtype to cast the teacher to outside FSDP/DeepSpeed (the student's dtype), or ``None``.

    Returns:
        The module to call for teacher forwards (possibly a wrapper around ``teacher``).
    """
    freeze_teacher(teacher)
    state = accelerator.state
    if getattr(state, "deepspeed_plugin", None) is not None:
        return _prepare_deepspeed(teacher, accelerator)
    fsdp_plugin = getattr(state, "fsdp_plugin", None)
    if fsdp_plugin is not None:
        if getattr(fsdp_plugin, "fsdp_version", 1) != 2:
            raise ValueError(
                "DistillationTrainer shards the teacher with FSDP version 2 only: set fsdp_version: 2 in the "
                "accelerate config (or fsdp_config={'fsdp_version': 2} in DistillationConfig)."
            )
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        teacher = fsdp2_prepare_model(accelerator, teacher)
        return teacher.eval()
    if len(set((getattr(teacher, "hf_device_map", None) or {}).values())) > 1:
        # Spread over several devices with device_map= (naive model parallelism): leave it where it is.
        return teacher
    current = next((p.dtype for p in teacher.parameters() if p.is_floating_point()), None)
    if dtype is not None and current is not None and current != dtype:
        logger.info("Casting the teacher from %s to the student's dtype %s", current, dtype)
        teacher = teacher.to(dtype=dtype)
    # Not accelerator.prepare_model: its mixed-precision wrapper would also convert the teacher's logits to
    # float32, a (batch, seq, vocab) copy kept until backward. The trainer runs the teacher under autocast.
    return teacher.to(accelerator.device).eval()


def _prepare_deepspeed(teacher: nn.Module, accelerator: Accelerator) -> nn.Module:
    """A DeepSpeed inference engine for the teacher, partitioned under ZeRO-3 and replicated below it."""
    import deepspeed

    config = _teacher_deepspeed_config(accelerator.state.deepspeed_plugin.deepspeed_config, accelerator)
    hidden = getattr(getattr(teacher, "config", None), "hidden_size", None)
    zero = config["zero_optimization"]
    if zero.get("stage") == 3 and isinstance(hidden, int):
        zero.setdefault("stage3_param_persistence_threshold", 10 * hidden)
        zero.setdefault("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden))
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    return engine.eval()


def _teacher_deepspeed_config(student_config: dict, accelerator: Accelerator) -> dict:
    """The student's DeepSpeed config made fit for an engine without optimizer: ZeRO-3 stays (partitioned
    parameters), lower stages become 0 (they only shard optimizer state and gradients, which a teacher lacks),
    and values still "auto" are resolved or dropped."""
    config = copy.deepcopy(student_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage", 0) != 3:
        zero["stage"] = 0
    for precision in ("bf16", "fp16"):
        section = config.get(precision)
        if isinstance(section, dict) and section.get("enabled") == "auto":
            section["enabled"] = accelerator.mixed_precision == precision
    if not isinstance(config.get("train_micro_batch_size_per_gpu"), int):
        config["train_micro_batch_size_per_gpu"] = 1
    for key in ("train_batch_size", "gradient_accumulation_steps"):
        if not isinstance(config.get(key), int):
            config.pop(key, None)
    _drop_auto(config)
    return config


def _drop_auto(section: dict) -> None:
    """Remove every value still set to "auto" (DeepSpeed then uses its default)."""
    for key in list(section):
        if section[key] == "auto":
            del section[key]
        elif isinstance(section[key], dict):
            _drop_auto(section[key])
