"""Sharing: model cards, push_to_hub and loading by repo id against a Hub served on 127.0.0.1, and loading a
BinaryMoS checkpoint in a Python process that never imports optimum_binarymos.

huggingface_hub reads ``HF_ENDPOINT`` once, when it is first imported, and other modules copy the value at their
own import; this pytest process imported transformers (and so huggingface_hub) long before any fixture runs. So
every step that talks to the test Hub runs in a fresh ``python -c`` process whose environment sets
``HF_ENDPOINT``, a dummy ``HF_TOKEN`` and a temporary ``HF_HOME`` before anything is imported; the server itself
(``tests/hub_server.py``) runs in a thread of this process, so tests inspect what was uploaded directly.
Fresh processes are also the only honest way to test what happens when nobody imports the package.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import VOCAB, make_float_model
from hub_server import FakeHub
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from optimum_binarymos import BinaryMoSConfig, convert_model
from optimum_binarymos.footprint import model_footprint
from optimum_binarymos.hub import (
    CARD_MARKER,
    card_record,
    record_base_model,
    record_evaluation,
    render_model_card,
    save_pretrained,
)

FLOAT_REPO = "org/tiny-float"
REPO = "user/tiny-binarymos"


def front_matter(card: str) -> dict:
    return yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", card, flags=re.DOTALL).group(1))


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL)


def save_tiny_llama_with_tokenizer(folder: Path) -> None:
    """A tiny float LLaMA, a word-level tokenizer covering the card's prompt, and a card with a license."""
    words = "the capital of france is paris".split()
    vocab = {"<unk>": 0, **{word: i + 1 for i, word in enumerate(words)}}
    vocab.update({f"w{i}": i for i in range(len(vocab), VOCAB)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<unk>").save_pretrained(
        folder
    )
    make_float_model("llama").save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# A tiny float model\n")


# ---------------------------------------------------------------------------------------------------------------
# The card, in this process (no Hub involved).
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def binary_model(float_checkpoint):
    return AutoModelForCausalLM.from_pretrained(
        float_checkpoint("llama"), quantization_config=BinaryMoSConfig(num_experts=4)
    )


def test_card_has_hub_metadata_a_snippet_the_settings_sizes_and_evaluation(binary_model):
    record_base_model(binary_model, FLOAT_REPO, license="apache-2.0")
    record_evaluation(binary_model, {"wikitext2_ppl": 12.3456, "arc_easy_acc": 0.5})
    card = render_model_card(binary_model, REPO, tags=["my-tag"])

    metadata = front_matter(card)
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "text-generation"
    assert {"binarymos", "1-bit", "my-tag"} <= set(metadata["tags"])
    assert metadata["base_model"] == FLOAT_REPO and metadata["base_model_relation"] == "quantized"
    assert metadata["license"] == "apache-2.0"
    assert CARD_MARKER in card
    assert "pip install optimum-binarymos" in card
    (snippet,) = python_blocks(card)
    assert "import optimum_binarymos" in snippet and f'model_id = "{REPO}"' in snippet
    compile(snippet, "snippet", "exec")
    assert "| scaling experts (`num_experts`) | 4 |" in card
    assert "14 linear layers in 2 decoder blocks" in card
    footprint = model_footprint(binary_model)
    assert "| whole model | " in card and f"{footprint.ratio:.2f}x" in card
    assert f"| bits per binarized weight | 16 | {footprint.bits_per_binarized_weight:.3f} |" in card
    assert "float32" in card  # the tiny model is float32: the card says what is really stored
    assert "| wikitext2_ppl | 12.35 |" in card and "| arc_easy_acc | 0.5 |" in card


def test_onebit_card_says_so_and_omits_empty_sections(float_checkpoint):
    model = AutoModelForCausalLM.from_pretrained(
        float_checkpoint("llama"), quantization_config=BinaryMoSConfig(num_experts=1)
    )
    card = render_model_card(model)
    assert "OneBit" in card and "| scaling experts (`num_experts`) | 1 (OneBit) |" in card
    assert "## Evaluation" not in card
    assert "base_model" not in front_matter(card)  # converted from a local folder: origin unknown


@pytest.mark.reliability
def test_save_pretrained_writes_the_card_but_keeps_a_hand_written_one(binary_model, tmp_path):
    save_pretrained(binary_model, tmp_path)
    assert CARD_MARKER in (tmp_path / "README.md").read_text()
    (tmp_path / "README.md").write_text("# My own words\n")
    save_pretrained(binary_model, tmp_path)
    assert (tmp_path / "README.md").read_text() == "# My own words\n"


def test_the_models_own_methods_are_transformers_own(binary_model, tmp_path):
    """Converting replaces no method of the model: its save_pretrained writes weights and config only, and the
    method's tags reach a plain push through transformers' model_tags."""
    for name in ("save_pretrained", "push_to_hub"):
        assert name not in vars(binary_model)
    binary_model.save_pretrained(tmp_path)
    assert not (tmp_path / "README.md").exists()
    assert {"binarymos", "1-bit"} <= set(binary_model.model_tags)


def test_conversion_from_the_hub_cache_records_base_model_and_license(tmp_path):
    snapshot = tmp_path / "hub" / "models--org--tiny-float" / "snapshots" / ("0123456789abcdef" * 3)[:40]
    make_float_model("llama").save_pretrained(snapshot)
    (snapshot / "README.md").write_text("---\nlicense: other\nlicense_name: tiny-license\n---\n# Tiny\n")
    model = AutoModelForCausalLM.from_pretrained(snapshot, quantization_config=BinaryMoSConfig())
    assert card_record(model) == {
        "base_model": FLOAT_REPO,
        "license": "other",
        "license_name": "tiny-license",
    }
    metadata = front_matter(render_model_card(model))
    assert metadata["license"] == "other" and metadata["license_name"] == "tiny-license"


def test_recorded_evaluation_survives_save_and_reload(binary_model, tmp_path):
    assert record_evaluation(binary_model, {"c4_ppl": 20.5}) == {"c4_ppl": 20.5}
    assert record_evaluation(binary_model, {"wikitext2_ppl": 15.0}) == {"c4_ppl": 20.5, "wikitext2_ppl": 15.0}
    binary_model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert card_record(again)["evaluation"] == {"c4_ppl": 20.5, "wikitext2_ppl": 15.0}
    assert "| c4_ppl | 20.5 |" in render_model_card(again)


@pytest.mark.parametrize("results", [{"ppl": [1.0]}, {"ppl": True}, {"": 1.0}])
def test_evaluation_values_must_fit_in_config_json(binary_model, results):
    with pytest.raises(ValueError, match="must be"):
        record_evaluation(binary_model, results)


def test_base_model_must_be_a_hub_id(binary_model):
    with pytest.raises(ValueError, match="Hub repo id"):
        record_base_model(binary_model, "/some/local/folder")


def test_a_float_model_has_no_binarymos_card():
    with pytest.raises(ValueError, match="not a BinaryMoS or ternary model"):
        render_model_card(make_float_model("llama"))


def test_no_start_up_hook_is_installed():
    site_packages = Path(sysconfig.get_paths()["purelib"])
    hooks = [path.name for path in site_packages.glob("*.pth") if "binarymos" in path.read_text(errors="replace")]
    assert hooks == [], "the package must not run code at interpreter start-up"


# ---------------------------------------------------------------------------------------------------------------
# Against the test Hub, in fresh Python processes.
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub():
    server = FakeHub()
    server.start()
    yield server
    server.stop()


def hub_env(hub: FakeHub, home: Path, **extra_env: str) -> dict[str, str]:
    """Environment of a fresh interpreter that talks to the test Hub."""
    return {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_TOKEN": "dummy",
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "0",  # the test session sets 1 for everything else
        "HF_HUB_DISABLE_TELEMETRY": "1",
        # The test Hub shares two busy cores with the clients: allow slow answers rather than time out.
        "HF_HUB_ETAG_TIMEOUT": "120",
        "HF_HUB_DOWNLOAD_TIMEOUT": "120",
        "TOKENIZERS_PARALLELISM": "false",
        **extra_env,
    }


def start_python(code: str, env: dict[str, str], *args: str) -> subprocess.Popen:
    """Start ``code`` (with ``sys.argv[1:] == args``) in a fresh interpreter; see :func:`last_json`."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def last_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


PUSH_AND_RELOAD = """
    import contextlib, io, json, re, sys
    import torch
    import optimum_binarymos
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from optimum_binarymos import BinaryMoSConfig, push_to_hub, save_pretrained
    from optimum_binarymos.hub import record_evaluation

    float_dir, out_dir, float_repo, repo = sys.argv[1:5]
    tokens = torch.randint(1, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    def logits(model):
        with torch.no_grad():
            return model(tokens).logits

    # A float model published on the Hub, with a tokenizer and a card that states its license.
    AutoModelForCausalLM.from_pretrained(float_dir).push_to_hub(float_repo)
    tokenizer = AutoTokenizer.from_pretrained(float_dir)
    tokenizer.push_to_hub(float_repo)
    HfApi().upload_file(path_or_fileobj=f"{float_dir}/README.md", path_in_repo="README.md", repo_id=float_repo)

    # Converted from its Hub id, evaluated, pushed with its tokenizer.
    model = AutoModelForCausalLM.from_pretrained(float_repo, quantization_config=BinaryMoSConfig(num_experts=4))
    record_evaluation(model, {"wikitext2_ppl": 42.5})
    first = push_to_hub(model, repo)
    tokenizer.push_to_hub(repo)
    first_logits = logits(model)

    reloaded = AutoModelForCausalLM.from_pretrained(repo)
    folder = snapshot_download(repo)
    from_folder = AutoModelForCausalLM.from_pretrained(folder)

    # The card's own snippet runs as written.
    card = open(hf_hub_download(repo, "README.md")).read()
    snippet = re.findall(r"```python\\n(.*?)```", card, flags=re.DOTALL)[0]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(snippet, {})

    # A second push of a changed model to the same repo; the first stays reachable by its commit id.
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.scale_out.mul_(2.0)
    second = push_to_hub(model, repo, commit_message="Scale fix")
    second_logits = logits(model)
    at_first = AutoModelForCausalLM.from_pretrained(repo, revision=first.oid)
    at_main = AutoModelForCausalLM.from_pretrained(repo)
    torch.save({"tokens": tokens, "logits": second_logits}, f"{out_dir}/expected.pt")

    # A hand-written card on the Hub is kept; the push only adds the tags.
    HfApi().create_repo("user/hand-written")
    HfApi().upload_file(path_or_fileobj=b"---\\nlicense: mit\\n---\\n# Mine\\n", path_in_repo="README.md",
                        repo_id="user/hand-written")
    push_to_hub(model, "user/hand-written")

    # When the Hub cannot say whether a card exists (an error, not a 404), the push stops and the card stays.
    HfApi().create_repo("user/flaky")
    HfApi().upload_file(path_or_fileobj=b"# Mine too\\n", path_in_repo="README.md", repo_id="user/flaky")
    try:
        push_to_hub(model, "user/flaky")
        flaky_error = ""
    except Exception as error:
        flaky_error = str(error)

    # save_pretrained(push_to_hub=True) and a push to another branch upload the card too.
    save_pretrained(model, f"{out_dir}/via-save", push_to_hub=True, repo_id="user/via-save")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.scale_in.mul_(0.5)
    push_to_hub(model, repo, revision="dev", commit_message="On a branch")

    # transformers' own push works too: weights and config, and its generic card carries the method's tags.
    model.push_to_hub("user/plain")

    close = lambda a, b: bool(torch.allclose(a, b, atol=1e-5, rtol=1e-5))
    print(json.dumps({
        "first": first.oid,
        "second": second.oid,
        "layer": type(reloaded.model.layers[0].mlp.down_proj).__name__,
        "reloaded_equal": close(logits(reloaded), first_logits),
        "folder_equal": close(logits(from_folder), first_logits),
        "snippet_printed": printed.getvalue().strip() != "",
        "changed": not close(first_logits, second_logits),
        "first_revision_equal": close(logits(at_first), first_logits),
        "main_equal": close(logits(at_main), second_logits),
        "flaky_error": flaky_error,
    }))
"""


@pytest.fixture(scope="module")
def pushed(hub, tmp_path_factory):
    """Run the whole publishing story once; tests below check its parts."""
    work = tmp_path_factory.mktemp("push")
    save_tiny_llama_with_tokenizer(work / "float")
    args = (str(work / "float"), str(work), FLOAT_REPO, REPO)
    hub.failing_files[("user/flaky", "README.md")] = 500
    result = last_json(finish(start_python(PUSH_AND_RELOAD, hub_env(hub, work / "hf-home"), *args)))
    return {"work": work, **result}


def test_push_uploads_packed_weights_config_and_card(hub, pushed):
    first = hub.repos[REPO].commits[pushed["first"]]
    assert {"config.json", "model.safetensors", "README.md"} <= set(first)
    config = json.loads(first["config.json"])
    assert config["quantization_config"]["quant_method"] == "binarymos"
    assert config["binarymos_model_card"]["base_model"] == FLOAT_REPO
    assert b"U8" in first["model.safetensors"][:20000]  # packed signs are uint8 in the safetensors header
    assert not hub.unknown_requests


def test_pushed_card_names_the_base_model_its_license_and_the_evaluation(hub, pushed):
    card = hub.files(REPO)["README.md"].decode()
    metadata = front_matter(card)
    assert metadata["base_model"] == FLOAT_REPO and metadata["base_model_relation"] == "quantized"
    assert metadata["license"] == "apache-2.0"  # read from the float model's card on the Hub at push time
    assert metadata["library_name"] == "transformers" and {"binarymos", "1-bit"} <= set(metadata["tags"])
    assert f'model_id = "{REPO}"' in card and "| wikitext2_ppl | 42.5 |" in card
    assert pushed["snippet_printed"]


def test_loading_by_repo_id_equals_the_pushed_model(pushed):
    assert pushed["layer"] == "PackedBinaryMoSLinear"
    assert pushed["reloaded_equal"] and pushed["folder_equal"]


def test_second_push_to_the_same_repo_keeps_history(hub, pushed):
    history = hub.history(REPO)
    assert history.index(pushed["first"]) < history.index(pushed["second"])
    assert hub.repos[REPO].refs["main"] == pushed["second"]
    assert hub.repos[REPO].messages[pushed["second"]] == "Scale fix"
    first, second = hub.repos[REPO].commits[pushed["first"]], hub.files(REPO)
    assert first["model.safetensors"] != second["model.safetensors"]
    assert CARD_MARKER in second["README.md"].decode() and "tokenizer.json" in second
    assert pushed["changed"] and pushed["first_revision_equal"] and pushed["main_equal"]


def test_save_pretrained_with_push_and_a_push_to_a_branch_upload_the_card(hub, pushed):
    via_save = hub.files("user/via-save")
    assert {"model.safetensors", "config.json"} <= set(via_save)
    assert 'model_id = "user/via-save"' in via_save["README.md"].decode()
    dev = hub.repos[REPO].refs["dev"]
    assert hub.repos[REPO].messages[dev] == "On a branch" and dev != hub.repos[REPO].refs["main"]
    assert CARD_MARKER in hub.files(REPO, "dev")["README.md"].decode()


@pytest.mark.reliability
def test_push_stops_and_keeps_the_card_when_the_hub_cannot_say_whether_one_exists(hub, pushed):
    assert "could not read the README.md" in pushed["flaky_error"]
    assert hub.files("user/flaky")["README.md"] == b"# Mine too\n"
    assert len(hub.history("user/flaky")) == 2  # its creation and the card: no upload commit


def test_a_plain_transformers_push_uploads_the_model_with_the_method_tags(hub, pushed):
    files = hub.files("user/plain")
    assert {"config.json", "model.safetensors"} <= set(files)
    card = files["README.md"].decode()
    assert CARD_MARKER not in card and "binarymos" in front_matter(card)["tags"]


def test_push_keeps_a_hand_written_card_and_adds_the_tags(hub, pushed):
    card = hub.files("user/hand-written")["README.md"].decode()
    assert "# Mine" in card and CARD_MARKER not in card
    metadata = front_matter(card)
    assert metadata["license"] == "mit" and "binarymos" in metadata["tags"]


NO_IMPORT = """
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM

    expected = torch.load(sys.argv[1])
    imported_before = "optimum_binarymos" in sys.modules
    try:
        model = AutoModelForCausalLM.from_pretrained(sys.argv[2])
    except Exception as error:
        print(json.dumps({"error": type(error).__name__, "message": str(error), "imported_before": imported_before,
                          "imported_after": "optimum_binarymos" in sys.modules}))
        raise SystemExit(0)
    with torch.no_grad():
        logits = model(expected["tokens"]).logits
    print(json.dumps({
        "imported_before": imported_before,
        "layer": type(model.model.layers[0].mlp.down_proj).__name__,
        "equal": bool(torch.allclose(logits, expected["logits"], atol=1e-5, rtol=1e-5)),
    }))
"""


@pytest.fixture(scope="module")
def no_import(hub, pushed):
    """Load the pushed repo in a fresh process that never imports optimum_binarymos (though it is installed)."""
    work = pushed["work"]
    result = finish(start_python(NO_IMPORT, hub_env(hub, work / "home-no-import"), str(work / "expected.pt"), REPO))
    return last_json(result), result.stderr


def test_without_the_import_loading_fails_loudly(no_import):
    outcome, stderr = no_import
    assert outcome["error"] == "RuntimeError" and not outcome["imported_after"]
    assert "Unknown quantization type, got binarymos" in stderr
    assert "MISMATCH" in stderr and "mlp.down_proj.weight" in stderr


def test_the_checkpoint_says_which_line_loads_it(hub, pushed):
    config = json.loads(hub.files(REPO)["config.json"])
    assert config["quantization_config"]["loading"].startswith("import optimum_binarymos before from_pretrained")
    card = hub.files(REPO)["README.md"].decode()
    assert "import optimum_binarymos" in card.split("from_pretrained")[0]


def test_the_readable_copy_of_the_card_template_is_current():
    shipped = (
        Path(__file__).resolve().parents[1] / "src" / "optimum_binarymos" / "templates" / "model_card.md"
    )
    copy_for_reading = Path(__file__).resolve().parents[1] / "model_cards" / "model_card.md"
    assert copy_for_reading.read_text() == shipped.read_text(), (
        "cp src/optimum_binarymos/templates/model_card.md model_cards/"
    )


@pytest.mark.reliability
def test_card_text_from_a_config_file_stays_inert():
    hostile = "mlp`|\n# Injected <img src=x onerror=alert(1)>"
    model = convert_model(
        make_float_model("llama"), BinaryMoSConfig(num_experts=2, modules_to_not_convert=[hostile])
    )
    record_evaluation(model, {"ppl | <b>": "1 |\n## Fake section"})
    card = render_model_card(model, "user/tiny")
    assert not [line for line in card.splitlines() if line.startswith(("# Injected", "## Fake"))]
    assert "<img" not in card and "<b>" not in card
    kept = next(line for line in card.splitlines() if line.startswith("| kept in float |"))
    assert kept.count(" | ") == 1  # one cell boundary: the hostile name did not add table columns
    assert "mlp\\`\\| # Injected &lt;img src=x onerror=alert(1)&gt;" in kept
    evaluation = next(line for line in card.splitlines() if "Fake section" in line)
    assert evaluation == "| ppl \\| &lt;b&gt; | 1 \\| ## Fake section |"


SILENT_HUB_PUSH = """
    import json, sys, time
    import torch
    from conftest import make_float_model
    from optimum_binarymos import BinaryMoSConfig, convert_model, push_to_hub

    model = convert_model(make_float_model("llama"), BinaryMoSConfig(num_experts=2))
    start = time.monotonic()
    try:
        push_to_hub(model, "user/never-answered", timeout=float(sys.argv[1]))
        outcome = {"error": None}
    except Exception as error:
        outcome = {"error": type(error).__name__, "message": str(error)}
    outcome["seconds"] = time.monotonic() - start
    print(json.dumps(outcome))
"""


@pytest.mark.reliability
def test_a_hub_that_never_answers_stops_the_push_after_the_timeout(tmp_path):
    """A server that accepts connections and sends nothing: the push raises TimeoutError instead of waiting."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept_and_stay_silent():
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            accepted.append(connection)

    threading.Thread(target=accept_and_stay_silent, daemon=True).start()
    env = {
        **os.environ,
        "HF_ENDPOINT": f"http://127.0.0.1:{server.getsockname()[1]}",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": "hf_silent",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }
    try:
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(SILENT_HUB_PUSH), "2"],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
    finally:
        server.close()
        for connection in accepted:
            connection.close()
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["error"] == "TimeoutError", result.stderr[-3000:]
    assert "did not answer for 2 s" in outcome["message"]
    assert outcome["seconds"] < 30 and accepted  # it did connect, and gave up soon after


HUB_IN_TROUBLE = """
    import json, sys
    from conftest import make_float_model
    from optimum_binarymos import BinaryMoSConfig, convert_model, push_to_hub

    model = convert_model(make_float_model("llama"), BinaryMoSConfig(num_experts=2))
    outcomes = {}
    for repo in sys.argv[1:]:
        try:
            push_to_hub(model, repo)
            outcomes[repo] = None
        except Exception as error:
            outcomes[repo] = f"{type(error).__name__}: {error}"
    print(json.dumps(outcomes))
"""

TROUBLES = {
    "user/token-refused": (("create_repo", 401), "401"),
    "user/commit-refused": (("commit", 401), "401"),
    "user/rate-limited": (("commit", 429), "429"),
    "user/connection-dropped": (("commit", "drop"), "disconnected"),
}


@pytest.mark.reliability
def test_a_hub_in_trouble_makes_the_push_fail_loudly_and_commit_nothing(hub, tmp_path):
    """401 (a token the Hub refuses), 429 (rate limited) and a dropped connection: an error that names the
    cause, and no commit, so a repo never holds half a model."""
    for repo, ((route, failure), _) in TROUBLES.items():
        if route != "create_repo":
            hub.create_repo(repo)
        hub.failing_routes[(route, repo)] = failure
    before = {repo: hub.history(repo) for repo in TROUBLES if repo in hub.repos}
    env = hub_env(hub, tmp_path / "hf-home")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    outcomes = last_json(finish(start_python(HUB_IN_TROUBLE, env, *TROUBLES)))
    for repo, (_, expected) in TROUBLES.items():
        assert outcomes[repo] is not None and expected in outcomes[repo].lower(), (repo, outcomes[repo])
        if repo in before:
            assert hub.history(repo) == before[repo], repo  # nothing committed
        else:
            assert repo not in hub.repos
