"""Distillation under torchrun: 2 CPU processes on gloo.

One launch covers both distributed setups: DDP through ``DistillationTrainer``, then FSDP2 with student and
teacher sharded. The test launches this file with ``python -m torch.distributed.run``; run as a script, it
is the worker.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def test_ddp_trainer_and_fsdp2_sharding_on_two_cpu_processes(tmp_path):
    report = tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(HERE), str(tmp_path), str(report),
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    data = json.loads(report.read_text())

    # DDP through DistillationTrainer
    ddp = data["ddp"]
    assert ddp["world_size"] == 2 and ddp["wrapper"] == "DistributedDataParallel"
    logs = [entry for entry in ddp["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in logs] == [1, 2, 3]
    for entry in logs:
        for key in ("loss", "kd_logits", "kd_hidden"):
            assert math.isfinite(entry[key]) and entry[key] > 0, (key, entry)
    assert ddp["checksums"][0] == ddp["checksums"][1]  # gradients were averaged: both hold the same student
    assert ddp["teacher_unchanged"] and ddp["final_form"] == "packed"

    # FSDP2: student and teacher sharded with accelerate's fully_shard plan, trained, saved packed
    fsdp = data["fsdp"]
    assert fsdp["student_sharded"] and fsdp["teacher_sharded"]
    assert all(math.isfinite(value) for value in fsdp["losses"]) and fsdp["losses"][-1] < fsdp["losses"][0]
    assert fsdp["packed_dtype"] == "U8" and fsdp["packed_max_difference"] < 1e-5
    # About 30 s on 2 idle cores, mostly two interpreters importing torch and transformers; not asserted, as a
    # shared machine can stretch it several times.
    print(
        f"torchrun launch: {elapsed:.1f} s (DDP {data['ddp_seconds']:.1f} s, FSDP2 {data['fsdp_seconds']:.1f} s)"
    )


# ---- worker ---------------------------------------------------------------------------------------------------


def tiny_pair():
    import copy

    import torch
    from conftest import make_float_model

    from optimum_binarymos import BinaryMoSConfig, convert_model

    teacher = make_float_model("llama")
    torch.manual_seed(0)
    return teacher, convert_model(copy.deepcopy(teacher), BinaryMoSConfig())


def ddp_run(output_dir: Path) -> dict:
    """Three DistillationTrainer steps under torchrun: accelerate wraps the student in DDP on gloo."""
    import torch
    import torch.distributed as dist

    from optimum_binarymos.distill import DistillationConfig, DistillationTrainer, TokenBlocks

    teacher, student = tiny_pair()
    teacher_before = {name: tensor.clone() for name, tensor in teacher.state_dict().items()}
    blocks = TokenBlocks(torch.randint(1, 96, (16, 16), generator=torch.Generator().manual_seed(0)))
    args = DistillationConfig(
        output_dir=str(output_dir),
        use_cpu=True,
        ddp_backend="gloo",
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=blocks)
    trainer.train()
    trainer.save_model(str(output_dir / "final"))
    checksum = torch.tensor(sum(param.double().sum().item() for param in student.parameters()))
    checksums = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(checksums, checksum)
    dist.barrier()  # rank 0 has finished writing the final folder
    config = json.loads((output_dir / "final" / "config.json").read_text())
    return {
        "world_size": dist.get_world_size(),
        "wrapper": type(trainer.model_wrapped).__name__,
        "log_history": trainer.state.log_history,
        "checksums": [value.item() for value in checksums],
        "teacher_unchanged": all(torch.equal(t, teacher_before[n]) for n, t in teacher.state_dict().items()),
        "final_form": config["quantization_config"]["checkpoint_form"],
    }


def fsdp2_run(output_dir: Path) -> dict:
    """FSDP2 on CPU/gloo with the pieces the trainer uses under FSDP: accelerate's ``fsdp2_prepare_model`` for
    the student, :func:`prepare_teacher` for the teacher, the distillation objective, and the packed save of a
    gathered full state dict. (accelerate turns an FSDP plugin into plain DDP on CPU, so the Trainer itself
    cannot be run with FSDP here.)"""
    import types

    import torch
    import torch.distributed as dist
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model
    from safetensors import safe_open
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM

    from optimum_binarymos.distill import DistillationObjective, binarymos_trainable_parameters
    from optimum_binarymos.distill.teacher import prepare_teacher

    rank = dist.get_rank()
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["LlamaDecoderLayer"],
        state_dict_type="FULL_STATE_DICT",
    )
    # What fsdp2_prepare_model and prepare_teacher read from the Trainer's accelerator.
    accelerator = types.SimpleNamespace(
        state=types.SimpleNamespace(fsdp_plugin=plugin, deepspeed_plugin=None),
        torch_device_mesh=None,
        parallelism_config=None,
        mixed_precision="no",
        is_main_process=rank == 0,
        device=torch.device("cpu"),
    )
    teacher, student = tiny_pair()
    binarymos_trainable_parameters(student)
    teacher = prepare_teacher(teacher, accelerator, None)
    student = fsdp2_prepare_model(accelerator, student)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-3)
    objective = DistillationObjective(hidden_layers=(0, 1))
    tokens = torch.randint(1, 96, (2, 16), generator=torch.Generator().manual_seed(rank))
    losses = []
    for _ in range(4):
        loss, _, _ = objective(student, teacher, {"input_ids": tokens})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())

    state_dict = get_model_state_dict(
        student, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    with student.hf_quantizer.saving_state_dict(state_dict):  # what the trainer's _save does
        student.save_pretrained(output_dir / "packed", is_main_process=rank == 0)
    dist.barrier()
    with torch.no_grad():
        reference = student(tokens).logits
    result = {
        "student_sharded": any(isinstance(p, DTensor) for p in student.parameters()),
        "teacher_sharded": any(isinstance(p, DTensor) for p in teacher.parameters()),
        "losses": losses,
    }
    if rank == 0:
        packed = AutoModelForCausalLM.from_pretrained(output_dir / "packed")
        with torch.no_grad():
            result["packed_max_difference"] = (packed(tokens).logits - reference).abs().max().item()
        with safe_open(str(output_dir / "packed" / "model.safetensors"), framework="pt") as tensors:
            result["packed_dtype"] = tensors.get_slice("model.layers.0.mlp.up_proj.weight").get_dtype()
    return result


def worker(output_dir: str, report: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    start = time.perf_counter()
    ddp = ddp_run(Path(output_dir) / "ddp")  # initializes the gloo process group through accelerate
    middle = time.perf_counter()
    fsdp = fsdp2_run(Path(output_dir) / "fsdp")
    if dist.get_rank() == 0:
        data = {
            "ddp": ddp,
            "fsdp": fsdp,
            "ddp_seconds": middle - start,
            "fsdp_seconds": time.perf_counter() - middle,
        }
        Path(report).write_text(json.dumps(data))
    dist.barrier()


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    worker(*sys.argv[1:3])
