"""The code examples of README.md and of every docs/*.md page run, against a tiny local model with a tiny tokenizer.

Conventions for the documentation's fenced code blocks (also stated in docs/DEVELOPMENT.md):

* ```` ```python ```` blocks run. The blocks of one page run in order in one namespace, in a working folder of their
  own (a page reads like one session, so every page starts with the setup its examples need). There is one test
  per block, named ``<page>-<n>``: ``pytest tests/test_readme.py -k CONVERT`` runs one page. A block's test first
  runs the page's earlier blocks that have not run yet, and is skipped when one of them failed.
* The model id ``HuggingFaceTB/SmolLM2-135M-Instruct`` is replaced by the path of a tiny local LLaMA (with a tiny
  word-level tokenizer), so nothing is downloaded.
* ```` ```py ```` marks a Python block that is illustrative only (it needs the network, a Hub account or a GPU): it is
  compiled, to catch syntax errors, but not run.
* ```` ```bash ````, ```` ```json ````, unlabelled and other blocks are not run.
* Tracebacks name the markdown file and the line of the failing statement.

Every relative link of every page must point at a file that exists (and a ``#fragment`` at a heading of it), and
every ``benchmarks/...`` or ``docs/...`` path quoted in backticks must exist: the figures cite the results behind them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
from conftest import VOCAB, make_float_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
README_MAX_CHARS = 8000
PAGES = ["README.md", *sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "docs").glob("*.md"))]
RUN = "python"  # fence info string of blocks that run
ILLUSTRATIVE = "py"  # fence info string of Python blocks that are only compiled

# Files each page's examples leave in its working folder (what the README's single run checked, now per page).
EXPECTED_OUTPUTS = {
    "README.md": ["smollm2-binarymos/model.safetensors", "smollm2-distilled/model.safetensors"],
    "docs/CONVERT.md": ["smollm2-binarymos/model.safetensors", "smollm2-onebit/model.safetensors"],
    "docs/TERNARY.md": ["smollm2-ternary/model.safetensors"],
    "docs/SHARING.md": ["smollm2-ternary/model.safetensors"],
    "docs/DISTILL.md": ["smollm2-distilled/model.safetensors"],
    "docs/PEFT.md": ["smollm2-binarymos-lora/adapter_config.json"],
}

FENCE = re.compile(r"^```([\w+-]*)[^`]*$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
QUOTED_PATH = re.compile(r"`((?:benchmarks|docs)/[\w./*-]+)`")


@dataclass(frozen=True)
class Block:
    page: str
    language: str
    first_line: int  # 1-based line of the file where the code starts
    code: str

    def compile(self, model_path: str | None = None):
        code = self.code if model_path is None else self.code.replace(README_MODEL_ID, model_path)
        # Leading newlines make line numbers in tracebacks those of the markdown file.
        return compile("\n" * (self.first_line - 1) + code, str(ROOT / self.page), "exec")


@cache
def code_blocks(page: str) -> tuple[Block, ...]:
    """Every top-level fenced block of the page, in order."""
    lines = (ROOT / page).read_text(encoding="utf-8").splitlines(keepends=True)
    blocks, start, language = [], None, ""
    for number, line in enumerate(lines, start=1):
        if start is None:
            match = FENCE.match(line.rstrip("\n"))
            if match:
                start, language = number + 1, match.group(1)
        elif line.rstrip() == "```":
            blocks.append(Block(page, language, start, "".join(lines[start - 1 : number - 1])))
            start = None
    assert start is None, f"{page}: the code block opened at line {start - 1} is never closed"
    return tuple(blocks)


def blocks_of(page: str, language: str) -> list[Block]:
    return [block for block in code_blocks(page) if block.language == language]


def without_code_blocks(page: str) -> str:
    text = (ROOT / page).read_text(encoding="utf-8")
    return re.sub(r"^```.*?^```[ \t]*$", "", text, flags=re.DOTALL | re.MULTILINE)


def heading_anchors(page: str) -> set[str]:
    """GitHub's anchors of the page's headings (lower case, punctuation dropped, spaces -> '-', repeats numbered)."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", without_code_blocks(page), flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchor, repeat = slug, 0
        while anchor in anchors:
            repeat += 1
            anchor = f"{slug}-{repeat}"
        anchors.add(anchor)
    return anchors


def save_tiny_model_with_tokenizer(folder: Path) -> None:
    words = "the capital of france is paris a an and to in".split()
    vocab = {"<unk>": 0, **{word: i + 1 for i, word in enumerate(words)}}
    vocab.update({f"w{i}": i for i in range(len(vocab), VOCAB)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<unk>")
    make_float_model("llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@dataclass
class PageRun:
    """One page's session: its working folder, its namespace and how far its blocks have run."""

    page: str
    folder: Path
    model_path: str
    namespace: dict = field(default_factory=dict, repr=False)
    done: int = 0
    failed: int | None = None

    def run_through(self, index: int) -> None:
        """Run the page's runnable blocks up to ``index`` (0-based) that have not run yet."""
        if self.failed is not None:  # that block's own test reported it
            pytest.skip(f"block {self.failed + 1} of {self.page} failed")
        blocks = blocks_of(self.page, RUN)
        while self.done <= index:
            block, self.done = blocks[self.done], self.done + 1
            environment = dict(os.environ)
            try:
                exec(block.compile(self.model_path), self.namespace)
            except BaseException:
                self.failed = self.done - 1
                raise
            finally:  # a block that sets environment variables (BINARYMOS_BACKEND) leaves no trace on later tests
                os.environ.clear()
                os.environ.update(environment)


@pytest.fixture(scope="module")
def page_run(tmp_path_factory):
    model = tmp_path_factory.mktemp("docs-model") / "tiny"
    save_tiny_model_with_tokenizer(model)
    runs: dict[str, PageRun] = {}

    def get(page: str) -> PageRun:
        if page not in runs:
            folder = tmp_path_factory.mktemp(re.sub(r"\W", "_", page))
            runs[page] = PageRun(page, folder, str(model))
        return runs[page]

    return get


def block_params(language: str) -> list:
    return [
        pytest.param(page, index, id=f"{page}-{index + 1}")
        for page in PAGES
        for index in range(len(blocks_of(page, language)))
    ]


@pytest.mark.parametrize(("page", "index"), block_params(RUN))
def test_doc_example_runs(page, index, page_run, monkeypatch):
    run = page_run(page)
    monkeypatch.chdir(run.folder)
    run.run_through(index)


@pytest.mark.parametrize(("page", "index"), block_params(ILLUSTRATIVE))
def test_illustrative_example_compiles(page, index):
    blocks_of(page, ILLUSTRATIVE)[index].compile()


@pytest.mark.parametrize("page", sorted(EXPECTED_OUTPUTS))
def test_doc_examples_write_their_outputs(page, page_run, monkeypatch):
    run = page_run(page)
    monkeypatch.chdir(run.folder)
    run.run_through(len(blocks_of(page, RUN)) - 1)
    for output in EXPECTED_OUTPUTS[page]:
        assert (run.folder / output).is_file(), f"{page}: its examples wrote no {output}"


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    source = ROOT / page
    broken = []
    for target in LINK.findall(without_code_blocks(page)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        linked = (source.parent / path).resolve() if path else source
        if not linked.exists():
            broken.append(target)
        elif (
            fragment
            and linked.suffix == ".md"
            and fragment not in heading_anchors(linked.relative_to(ROOT).as_posix())
        ):
            broken.append(target)
    for quoted in QUOTED_PATH.findall(without_code_blocks(page)):
        if not any(ROOT.glob(quoted)):
            broken.append(quoted)
    assert not broken, f"{page} points at files or headings that do not exist: {broken}"


def test_readme_is_short_and_links_every_docs_page():
    text = README.read_text(encoding="utf-8")
    assert len(text) <= README_MAX_CHARS, f"README.md has {len(text)} characters; move detail to docs/"
    assert len(blocks_of("README.md", RUN)) >= 3  # the quick starts
    unlinked = [page for page in PAGES[1:] if f"]({page})" not in text]
    assert not unlinked, f"README.md's documentation table does not link {unlinked}"


def test_code_blocks_use_known_languages():
    """A typo in a fence's language (```pyhton) would silently drop a block from the tests."""
    known = {RUN, ILLUSTRATIVE, "bash", "json", "c", "yaml", "text", ""}
    odd = [
        (b.page, b.first_line - 1, b.language)
        for page in PAGES
        for b in code_blocks(page)
        if b.language not in known
    ]
    assert not odd, f"code blocks fenced with an unknown language (page, line, language): {odd}"
