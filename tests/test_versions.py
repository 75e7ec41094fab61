"""The dependency versions the package admits: known-broken pairs are excluded from its metadata, and an
environment forced past them is explained where adapters are set up."""

from __future__ import annotations

import logging
from importlib.metadata import requires

from packaging.requirements import Requirement
from peft import LoraConfig
from transformers.integrations import peft as transformers_peft

from optimum_binarymos.integrations import _installed_version, adapter_version_conflict
from optimum_binarymos.integrations.peft import register_lora_layers


def test_metadata_excludes_transformers_whose_adapters_need_an_unreleased_peft():
    # transformers 5.24.0 declares MIN_PEFT_VERSION 0.22.0; the newest peft released is 0.21.2.
    (transformers,) = [Requirement(r) for r in requires("optimum-binarymos") if Requirement(r).name == "transformers"]
    assert not transformers.specifier.contains("5.24.0")
    assert transformers.specifier.contains("5.23.0")


def test_conflict_names_both_versions_and_the_fix():
    message = adapter_version_conflict("5.24.0", "0.22.0", "0.21.2")
    assert "transformers 5.24.0 needs peft >= 0.22.0" in message
    assert "peft 0.21.2 is installed" in message
    assert "pip install 'peft>=0.22.0'" in message and "pip install 'transformers<5.24.0'" in message
    assert adapter_version_conflict("5.23.0", "0.20.0", "0.21.2") is None
    assert adapter_version_conflict("5.23.0", None, "0.21.2") is None  # a transformers that declares no floor


def test_the_locked_environment_has_no_conflict():
    assert adapter_version_conflict() is None


def test_a_forced_conflict_is_explained_when_a_lora_config_is_registered(monkeypatch, caplog):
    # Fakes transformers' declared floor above the installed peft, as transformers 5.24 + peft 0.21.2 are.
    peft_version = _installed_version("peft")
    monkeypatch.setattr(transformers_peft, "MIN_PEFT_VERSION", "99.0.0")
    with caplog.at_level(logging.WARNING, logger="optimum_binarymos.integrations"):
        register_lora_layers(LoraConfig(r=2))
    (record,) = [r for r in caplog.records if "needs peft >= 99.0.0" in r.getMessage()]
    assert f"peft {peft_version} is installed" in record.getMessage()
