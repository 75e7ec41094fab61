"""Distill a Hugging Face causal LM into its 1-bit BinaryMoS (or ternary) version (quantization-aware knowledge
distillation).

The float model is the teacher; the student is the same checkpoint loaded with ``BinaryMoSConfig`` (latent
weights, SVID-initialized scales; experts, routers and output scales then calibrated on the first
``--calibration_tokens`` training tokens) or, with ``--method ternary``, with ``TernaryConfig`` (TWN-initialized
scales and shifts, each row's magnitude then calibrated the same way). Text comes from local files (``--train-files``) or a
``datasets`` dataset (``--dataset_name``, needs ``pip install datasets``); it is tokenized, joined and cut into
``--block-size`` blocks. Every ``DistillationConfig`` / ``TrainingArguments`` flag works (``--help`` lists
them); the defaults are the small-budget recipe of ``DistillationConfig`` (lr 1e-3, scales 5e-3, cosine, 5 %
warmup, KL per token + OneBit's normalized hidden-state distance); ``DistillationConfig.paper`` is the authors'.
Intermediate checkpoints keep latent weights (resume with
``--resume_from_checkpoint``); the final model is saved packed, 1 bit per weight, in ``<output_dir>/final``.

One CPU (a quick check on a small model)::

    python -m optimum_binarymos.distill.script --model_name_or_path HuggingFaceTB/SmolLM2-135M --train-files a.txt b.txt \\
        --block-size 512 --dtype float32 --use_cpu --max_steps 100 --output_dir distill-out

Several GPUs, one process each (DDP; the teacher is replicated)::

    torchrun --nproc_per_node 4 -m optimum_binarymos.distill.script --model_name_or_path meta-llama/Llama-2-7b-hf \\
        --dataset_name allenai/c4 --dataset_config en --block-size 2048 --bf16 --gradient_checkpointing \\
        --output_dir llama2-7b-binarymos
    # or: accelerate launch --num_processes 4 -m optimum_binarymos.distill.script ...

Models that do not fit on one GPU: FSDP2 (student and teacher both sharded) or DeepSpeed ZeRO-3::

    accelerate launch --config_file examples/accelerate_fsdp2.yaml -m optimum_binarymos.distill.script \\
        --model_name_or_path meta-llama/Llama-2-13b-hf --dataset_name allenai/c4 --dataset_config en \\
        --bf16 --gradient_checkpointing --output_dir llama2-13b-binarymos
    accelerate launch --config_file examples/accelerate_deepspeed_zero3.yaml -m optimum_binarymos.distill.script ...
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, default_data_collator

from ..calibration import DEFAULT_CALIBRATION_TOKENS, MIN_CALIBRATION_TOKENS
from ..methods.binarymos import BinaryMoSConfig
from ..methods.ternary import TernaryConfig
from .config import DistillationConfig
from .data import TokenBlocks, load_text_blocks, text_blocks
from .trainer import DistillationTrainer

logger = logging.getLogger("distill")


@dataclass
class ScriptArguments:
    """What to distill and on which text."""

    model_name_or_path: str = field(
        metadata={"help": "Float causal LM (Hub id or folder): teacher and student."}
    )
    train_files: list[str] | None = field(
        default=None, metadata={"help": "UTF-8 text files to train on, each one a document."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "A `datasets` dataset to train on instead of --train-files."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration of --dataset_name."})
    dataset_split: str = field(default="train", metadata={"help": "Split of --dataset_name."})
    text_column: str = field(default="text", metadata={"help": "Text column of --dataset_name."})
    block_size: int = field(default=2048, metadata={"help": "Tokens per training block (BinaryMoS: 2048)."})
    max_train_blocks: int | None = field(default=None, metadata={"help": "Use at most this many blocks."})
    eval_blocks: int = field(
        default=0,
        metadata={"help": "Hold out this many of the last blocks to report eval_loss on; 0 = none."},
    )
    method: Literal["binarymos", "ternary"] = field(
        default="binarymos",
        metadata={
            "help": "Student: 'binarymos' (1 bit; --num_experts 1 is OneBit) or 'ternary' (1.58 bits, DLT)."
        },
    )
    num_experts: int = field(
        default=4, metadata={"help": "Scaling experts per layer (1 = OneBit); binarymos only."}
    )
    group_size: int = field(
        default=128, metadata={"help": "Weights per ternary scale and shift; ternary only."}
    )
    calibration_tokens: int = field(
        default=DEFAULT_CALIBRATION_TOKENS,
        metadata={
            "help": "Tokens of the first training blocks that initialize the BinaryMoS experts, routers and output "
            "scales (ternary: each row's magnitude) from the float model's activations (data-aware init); 0 = SVID "
            "scales and a random router (ternary: TWN only)."
        },
    )
    dtype: Literal["bfloat16", "float16", "float32"] = field(
        default="bfloat16",
        metadata={"help": "dtype the models are loaded in; trainable parameters still train in float32."},
    )
    final_dir: str | None = field(
        default=None, metadata={"help": "Where the packed model goes (default: <output_dir>/final)."}
    )


def load_blocks(script: ScriptArguments, tokenizer):
    """Training blocks from --train-files or --dataset_name."""
    if bool(script.train_files) == bool(script.dataset_name):
        raise ValueError("Give exactly one of --train-files and --dataset_name.")
    if script.train_files:
        return load_text_blocks(script.train_files, tokenizer, script.block_size, script.max_train_blocks)
    try:
        import datasets
    except ImportError as error:
        raise ImportError("--dataset_name needs the `datasets` package: pip install datasets") from error
    rows = datasets.load_dataset(script.dataset_name, script.dataset_config, split=script.dataset_split)
    return text_blocks(
        (row[script.text_column] for row in rows), tokenizer, script.block_size, script.max_train_blocks
    )


def student_config(script: ScriptArguments, train: TokenBlocks) -> BinaryMoSConfig | TernaryConfig:
    """The quantization config of the student, calibrated on the first training blocks (both methods)."""
    if script.method not in ("binarymos", "ternary"):
        raise ValueError(f"--method must be 'binarymos' or 'ternary', got {script.method!r}")
    if script.method == "ternary":
        make = lambda **data: TernaryConfig(group_size=script.group_size, **data)  # noqa: E731
    else:
        make = lambda **data: BinaryMoSConfig(num_experts=script.num_experts, **data)  # noqa: E731
    tokens = min(script.calibration_tokens, train.blocks.numel())
    if not script.calibration_tokens:
        return make()
    if tokens < MIN_CALIBRATION_TOKENS:
        logger.warning(
            "Only %d training tokens: too few to calibrate (at least %d); the student keeps its data-free "
            "initialization.",
            tokens,
            MIN_CALIBRATION_TOKENS,
        )
        return make()
    return make(dataset=train.blocks, calibration_tokens=tokens)


def main(argv: list[str] | None = None) -> str:
    """Run the distillation; returns the folder of the packed model."""
    parser = HfArgumentParser((ScriptArguments, DistillationConfig))
    script, args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=args.get_process_log_level())
    logging.getLogger("optimum_binarymos").setLevel(logging.INFO if args.should_log else logging.WARNING)
    transformers.logging.set_verbosity(args.get_process_log_level())

    dtype = getattr(torch, script.dtype)
    tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
    blocks = load_blocks(script, tokenizer)
    train, held_out = blocks.split(script.eval_blocks) if script.eval_blocks else (blocks, None)
    teacher = AutoModelForCausalLM.from_pretrained(script.model_name_or_path, dtype=dtype)
    # The student's random parts (routers before calibration, k-means starts) follow --seed too.
    transformers.set_seed(args.seed)
    student = AutoModelForCausalLM.from_pretrained(
        script.model_name_or_path, quantization_config=student_config(script, train), dtype=dtype
    )
    logger.info("%d training blocks of %d tokens", len(train), script.block_size)

    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=train,
        eval_dataset=held_out,
        processing_class=tokenizer,
        data_collator=default_data_collator,  # fixed-length blocks: no padding, no pad token needed
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    if held_out is not None:
        trainer.evaluate()
    final_dir = script.final_dir or str(Path(args.output_dir) / "final")
    trainer.save_model(final_dir)  # packed: 1 bit per binarized weight
    logger.info("Packed %s model saved to %s", script.method, final_dir)
    return final_dir


if __name__ == "__main__":
    main(sys.argv[1:])
