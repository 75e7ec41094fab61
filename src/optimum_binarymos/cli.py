"""Command line: ``python -m optimum_binarymos <command>`` and ``optimum-cli binarymos <command>``.

Commands: ``quantize`` (float -> latent or packed BinaryMoS), ``distill``, ``evaluate`` (perplexity; zero-shot
through lm-eval), ``footprint``, ``card``, ``push``. Each command is a :class:`Command`: its arguments and its
``run``; the two front ends (plain argparse here, optimum's CLI in ``optimum/commands/register``) share them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

DTYPES = ("bfloat16", "float16", "float32")


class CommandError(Exception):
    """Bad input: printed as ``error: <message>`` with exit status 2, without a traceback."""


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _torch_dtype(name: str | None):
    import torch

    return getattr(torch, name) if name else None


def _load_model(path: str, dtype: str | None = None, quantization_config=None, revision: str | None = None):
    from transformers import AutoModelForCausalLM

    import optimum_binarymos  # noqa: F401  registers the quantization methods

    kwargs = {"dtype": _torch_dtype(dtype)} if dtype else {}
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if revision:
        kwargs["revision"] = revision
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as error:
        raise CommandError(f"cannot load a model from {path!r}: {error}") from error


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return None


# quantize ------------------------------------------------------------------------------------------------------


def _quantize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="float causal LM: Hub id or local folder")
    parser.add_argument("output_dir", help="folder to write the BinaryMoS (or ternary) model to")
    parser.add_argument(
        "--method",
        choices=("binarymos", "ternary"),
        default="binarymos",
        help="binarymos: 1-bit signs with a mixture of scales; ternary: TernaryLLM's DLT (1.58 bits)",
    )
    parser.add_argument("--num-experts", type=int, default=4, help="scaling experts per layer (1 = OneBit)")
    parser.add_argument(
        "--group-size", type=int, default=128, help="ternary: input columns per scale/shift group"
    )
    parser.add_argument(
        "--code-packing", choices=("2bit", "base3"), default="2bit", help="ternary: how trits are stored"
    )
    parser.add_argument(
        "--modules-to-not-convert", nargs="*", default=None, help="extra modules to keep in float"
    )
    _embedding_bits_argument(parser)
    parser.add_argument(
        "--dtype", choices=DTYPES, default="bfloat16", help="dtype of scales, router, embeddings"
    )
    parser.add_argument(
        "--form",
        choices=("packed", "latent"),
        default="packed",
        help="packed: 1 bit per weight, for inference; latent: float latent weights, to train further",
    )


def _embedding_bits_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--embedding-bits",
        type=int,
        choices=(8, 4),
        default=None,
        help="8: input embeddings and lm_head as int8 rows with one scale each; 4: 4-bit codes with one scale per "
        "32 columns (default: float)",
    )


def _quantize(args: argparse.Namespace) -> int:
    from .methods.binarymos import BinaryMoSConfig
    from .methods.lifecycle import latent_saving
    from .methods.ternary import TernaryConfig

    try:
        if args.method == "ternary":
            config = TernaryConfig(
                group_size=args.group_size,
                code_packing=args.code_packing,
                modules_to_not_convert=args.modules_to_not_convert,
                embedding_bits=args.embedding_bits,
            )
            description = f"ternary model (groups of {args.group_size}, {args.code_packing} codes)"
        else:
            config = BinaryMoSConfig(
                num_experts=args.num_experts,
                modules_to_not_convert=args.modules_to_not_convert,
                embedding_bits=args.embedding_bits,
            )
            description = f"BinaryMoS model ({args.num_experts} experts)"
        if args.embedding_bits is not None:
            description += f", {args.embedding_bits}-bit embeddings"
    except ValueError as error:
        raise CommandError(str(error)) from error
    _refuse_quantized_input(args.model)
    model = _load_model(args.model, args.dtype, quantization_config=config)
    from .hub import save_pretrained

    if args.form == "latent":
        with latent_saving(model):
            save_pretrained(model, args.output_dir)
    else:
        save_pretrained(model, args.output_dir)
    tokenizer = _load_tokenizer(args.model)
    if tokenizer is not None:
        tokenizer.save_pretrained(args.output_dir)
    print(f"saved {args.form} {description} to {args.output_dir}")
    return 0


def _refuse_quantized_input(path: str) -> None:
    """``quantize`` starts from float weights: a model that is already quantized would keep its own settings
    whatever the flags say (or lose precision twice)."""
    from transformers import AutoConfig

    try:
        existing = getattr(AutoConfig.from_pretrained(path), "quantization_config", None)
    except (OSError, ValueError):
        return  # _load_model reports an unreadable model
    if existing is not None:
        method = existing.get("quant_method") if isinstance(existing, dict) else getattr(existing, "quant_method", None)
        raise CommandError(
            f"{path!r} is already quantized (quant_method {method!r}); quantize takes a float model. Give the "
            "float checkpoint it came from."
        )


# evaluate ------------------------------------------------------------------------------------------------------


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="causal LM (float or BinaryMoS): Hub id or local folder")
    parser.add_argument(
        "--text",
        nargs="+",
        default=None,
        help="text files to score, or a dataset name (wikitext2, c4; needs `pip install datasets` and network)",
    )
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per non-overlapping window")
    parser.add_argument("--max-windows", type=int, default=None, help="score only the first N windows")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument(
        "--tasks", nargs="+", default=None, help="lm-eval zero-shot tasks, e.g. piqa arc_easy"
    )
    parser.add_argument("--include-path", default=None, help="folder of extra lm-eval task YAMLs")
    parser.add_argument("--limit", type=int, default=None, help="lm-eval: examples per task")
    parser.add_argument("--dtype", choices=DTYPES, default=None)
    parser.add_argument("--output", default=None, help="write the results as JSON here")


def _evaluate(args: argparse.Namespace) -> int:
    if not args.text and not args.tasks:
        raise CommandError("nothing to evaluate: give --text (perplexity) and/or --tasks (zero-shot)")
    model = _load_model(args.model, args.dtype)
    results: dict = {}
    if args.text:
        from .eval import c4_windows, load_eval_documents, load_eval_text, perplexity

        tokenizer = _load_tokenizer(args.model)
        if tokenizer is None:
            raise CommandError(f"{args.model!r} has no tokenizer to tokenize the evaluation text")
        name_or_files = args.text[0] if len(args.text) == 1 else args.text
        try:
            if name_or_files == "c4":  # the C4 protocol: random windows of documents, not one joined stream
                source = {"token_ids": c4_windows(tokenizer, load_eval_documents("c4"), seq_len=args.seq_len)}
            else:
                source = {"text": load_eval_text(name_or_files)}
        except (OSError, ValueError, RuntimeError, ImportError) as error:
            raise CommandError(str(error)) from error
        result = perplexity(
            model,
            tokenizer,
            seq_len=args.seq_len,
            max_windows=args.max_windows,
            batch_size=args.batch_size,
            **source,
        )
        print(f"perplexity {result.ppl:.4f} over {result.windows} windows of {result.seq_len} tokens")
        results["perplexity"] = result.ppl
    if args.tasks:
        from .integrations.lm_eval import evaluate_zero_shot

        accuracies = evaluate_zero_shot(
            model,
            tasks=args.tasks,
            tokenizer=_load_tokenizer(args.model),
            include_path=args.include_path,
            limit=args.limit,
        )
        for task, value in accuracies.items():
            print(f"{task}: {value:.4f}")
        results["zero_shot"] = accuracies
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return 0


# footprint -----------------------------------------------------------------------------------------------------


def _footprint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="Hub id or local folder: only its config.json is read")
    parser.add_argument(
        "--method",
        choices=METHODS,
        default=None,
        help="conversion to account for; default: the one whose flags are given, else the checkpoint's own "
        "(quant_method in its config.json), else binarymos",
    )
    parser.add_argument(
        "--num-experts", type=int, default=None, help="binarymos: default the model's own, else 4"
    )
    parser.add_argument(
        "--group-size", type=int, default=None, help="ternary: default the model's own, else 128"
    )
    parser.add_argument(
        "--code-packing",
        default=None,
        help="ternary: 2bit (4 trits per byte) or base3 (5 per byte); default the model's own, else 2bit",
    )
    _embedding_bits_argument(parser)


#: Values of ``footprint --method``.
METHODS = ("binarymos", "ternary")

#: Flags of ``footprint`` that only one method takes, with the config field each sets.
_METHOD_FLAGS = {
    "binarymos": {"num_experts": "--num-experts"},
    "ternary": {"group_size": "--group-size", "code_packing": "--code-packing"},
}


def _footprint_quantization(args: argparse.Namespace, own):
    """The quantization config ``footprint`` accounts for: ``own`` (the checkpoint's, or ``None``) with the
    command-line choices applied; ``None`` when nothing is asked beyond ``own``."""
    from .methods import registered_methods

    methods = {method.cli_name: method for method in registered_methods()}
    quant_methods = {name: method.quant_method for name, method in methods.items()}
    given = {
        method: {field: getattr(args, field) for field in flags} for method, flags in _METHOD_FLAGS.items()
    }
    given = {method: {k: v for k, v in fields.items() if v is not None} for method, fields in given.items()}
    own_method = next(
        (name for name, quant in quant_methods.items() if getattr(own, "quant_method", None) == quant), None
    )
    asked = [name for name, fields in given.items() if fields]  # a method's own flags choose it
    method = args.method or (asked[0] if len(asked) == 1 else None) or own_method or "binarymos"
    for other, fields in given.items():
        if other != method and fields:
            flags = ", ".join(_METHOD_FLAGS[other][field] for field in fields)
            raise CommandError(f"--method {method} takes no {flags} (that is for --method {other})")
    common = {"embedding_bits": args.embedding_bits} if args.embedding_bits is not None else {}
    if method == own_method and not given[method] and not common:
        return None
    config_class = methods[method].config_class
    # The checkpoint's other settings (modules kept in float...) still hold when only some flags change.
    kept = own.to_dict() if method == own_method else {}
    try:
        return config_class(**{**kept, **given[method], **common})
    except ValueError as error:
        raise CommandError(str(error)) from error


def _footprint(args: argparse.Namespace) -> int:
    from transformers import AutoConfig

    import optimum_binarymos  # noqa: F401

    from .footprint import config_quantization, estimate_footprint

    try:
        config = AutoConfig.from_pretrained(args.model)
    except (OSError, ValueError) as error:
        raise CommandError(f"cannot read a model config from {args.model!r}: {error}") from error
    print(estimate_footprint(config, _footprint_quantization(args, config_quantization(config))))
    return 0


# card / push ---------------------------------------------------------------------------------------------------


def _card_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="BinaryMoS or ternary model folder or Hub id")
    parser.add_argument(
        "--model-id", default=None, help="repo id the card names (default: the model argument)"
    )
    parser.add_argument("--output", default=None, help="write the card here instead of printing it")


def _card(args: argparse.Namespace) -> int:
    from .hub import render_model_card

    card = render_model_card(_load_model(args.model), args.model_id or args.model)
    if args.output:
        Path(args.output).write_text(card, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        print(card)
    return 0


def _push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="BinaryMoS or ternary model folder (packed or latent)")
    parser.add_argument("repo_id", help="Hub repository to push to, e.g. me/smollm2-binarymos")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision", default=None, help="branch to push to")
    parser.add_argument("--commit-message", default=None)


def _push(args: argparse.Namespace) -> int:
    from .hub import push_to_hub

    model = _load_model(args.model)
    info = push_to_hub(
        model,
        args.repo_id, private=args.private or None, revision=args.revision, commit_message=args.commit_message
    )
    tokenizer = _load_tokenizer(args.model)
    if tokenizer is not None:
        tokenizer.push_to_hub(args.repo_id, revision=args.revision)
    print(f"pushed {args.model} to {getattr(info, 'commit_url', None) or args.repo_id}")
    return 0


# distill -------------------------------------------------------------------------------------------------------


def _distill_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", help="float causal LM (Hub id or folder): the teacher, and the student to binarize"
    )
    parser.add_argument(
        "arguments",
        nargs=argparse.REMAINDER,
        help="flags of the distillation (ScriptArguments, DistillationConfig and TrainingArguments fields, e.g. "
        "--train-files a.txt --output_dir out --max_steps 100); `distill MODEL --help` lists them all",
    )


def _distill(args: argparse.Namespace) -> int:
    from .distill.script import main as distill_main

    try:
        final_dir = distill_main(["--model_name_or_path", args.model, *args.arguments])
    except ValueError as error:
        raise CommandError(str(error)) from error
    print(f"distilled model saved packed to {final_dir}")
    return 0


COMMANDS: tuple[Command, ...] = (
    Command(
        "quantize",
        "convert a float model to BinaryMoS or ternary (packed or latent)",
        _quantize_arguments,
        _quantize,
    ),
    Command("distill", "distill a float model into its BinaryMoS or ternary version", _distill_arguments, _distill),
    Command(
        "evaluate", "perplexity on text, zero-shot accuracy through lm-eval", _evaluate_arguments, _evaluate
    ),
    Command(
        "footprint", "fp16 vs packed size of a model, from its config only", _footprint_arguments, _footprint
    ),
    Command("card", "render the model card of a BinaryMoS or ternary model", _card_arguments, _card),
    Command("push", "push a BinaryMoS or ternary model and its card to the Hub", _push_arguments, _push),
)


def run_command(command: Command, args: argparse.Namespace) -> int:
    """Run ``command``; bad input becomes ``error: ...`` on stderr and exit status 2."""
    try:
        return command.run(args)
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def build_parser(prog: str = "python -m optimum_binarymos") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="BinaryMoS 1-bit models for the Hugging Face stack."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(_command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args._command, args)


if __name__ == "__main__":
    sys.exit(main())
