"""Distill a Hugging Face causal LM into its 1-bit BinaryMoS version (quantization-aware knowledge distillation).

The float model is the teacher; the student is the same checkpoint loaded with ``BinaryMoSConfig`` (latent
weights, SVID-initialized scales, random router). Text comes from local files (``--train-files``) or a
``datasets`` dataset (``--dataset_name``, needs ``pip install datasets``); it is tokenized, joined and cut into
``--block-size`` blocks. Every ``DistillationConfig`` / ``TrainingArguments`` flag works (``--help`` lists
them); the defaults are the BinaryMoS recipe (lr 2e-5, cosine, 3 % warmup, 3 epochs, batch 4,
KL + 10 x hidden-state MSE). Intermediate checkpoints keep latent weights (resume with
``--resume_from_checkpoint``); the final model is saved packed, 1 bit per weight, in ``<output_dir>/final``.

One CPU (a quick check on a small model)::

    python examples/distill.py --model_name_or_path HuggingFaceTB/SmolLM2-135M --train-files a.txt b.txt \\
        --block-size 512 --dtype float32 --use_cpu --max_steps 100 --output_dir distill-out

Several GPUs, one process each (DDP; the teacher is replicated)::

    torchrun --nproc_per_node 4 examples/distill.py --model_name_or_path meta-llama/Llama-2-7b-hf \\
        --dataset_name allenai/c4 --dataset_config en --block-size 2048 --bf16 --gradient_checkpointing \\
        --output_dir llama2-7b-binarymos
    # or: accelerate launch --num_processes 4 examples/distill.py ...

Models that do not fit on one GPU: FSDP2 (student and teacher both sharded) or DeepSpeed ZeRO-3::

    accelerate launch --config_file examples/accelerate_fsdp2.yaml examples/distill.py \\
        --model_name_or_path meta-llama/Llama-2-13b-hf --dataset_name allenai/c4 --dataset_config en \\
        --bf16 --gradient_checkpointing --output_dir llama2-13b-binarymos
    accelerate launch --config_file examples/accelerate_deepspeed_zero3.yaml examples/distill.py ...
"""

import sys

from optimum_binarymos.distill.script import main

if __name__ == "__main__":
    main(sys.argv[1:])
