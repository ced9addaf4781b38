"""Pushing to a hub through huggingface_hub's real client, against a local server speaking the hub's
upload API on 127.0.0.1: what arrives equals what was saved, in one commit; retries; auth; conflicts."""
from __future__ import annotations

import pytest
from _tiny import saved_quantized
from hub_server import TOKEN, HubServer

import compresskit
from compresskit.export.hub import PushAuthError, PushError, RepoConflictError, local_files


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, tiny_tokenizer):
    _, path = saved_quantized(tmp_path_factory.mktemp("push") / "tiny-w4", tiny_tokenizer)
    (path / "evaluation").mkdir()
    (path / "evaluation" / "report.md").write_text("# a report in a subfolder\n")
    return path


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


def _push(hub, path, repo="tester/tiny-w4", **kw):
    """Push as saved: these tests are about the commit, not the format (test_a_quantized_model_goes_as_gptq)."""
    kw.setdefault("token", TOKEN)
    kw.setdefault("format", "native")
    return compresskit.push(path, repo, endpoint=hub.endpoint, backoff=0.01, **kw)


def _saved(path) -> dict[str, bytes]:
    return {name: f.read_bytes() for name, f in local_files(path).items()}


def test_push_sends_every_file_in_one_commit(hub, artifact):
    result = _push(hub, artifact, private=True)
    assert result.repo_id == "tester/tiny-w4" and result.commit_url.startswith(hub.endpoint)
    files = hub.files("tester/tiny-w4")
    assert {k: v for k, v in files.items() if k != ".gitattributes"} == _saved(artifact)
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "evaluation/report.md"} <= set(files)
    repo = hub.repos["tester/tiny-w4"]
    assert repo.private and len(repo.log) == 2  # the hub's initial commit + exactly one of ours
    assert sum(1 for m, p in hub.requests if p.endswith("/commit/main")) == 1
    assert result.commit_oid == repo.branches["main"] and sorted(result.uploaded) == sorted(_saved(artifact))

    again = _push(hub, artifact)  # the same files: nothing to commit
    assert again.up_to_date and len(repo.log) == 2


def test_a_bare_name_goes_to_the_tokens_namespace(hub, artifact):
    result = _push(hub, artifact, repo="bare-name")
    assert result.repo_id == "tester/bare-name" and "README.md" in hub.files("tester/bare-name")


def test_transient_errors_are_retried(hub, artifact):
    hub.fail["commit"] = [500]
    hub.fail["create"] = [503]
    result = _push(hub, artifact)
    assert result.attempts == 3 and not result.up_to_date
    assert len(hub.repos["tester/tiny-w4"].log) == 2  # still one commit of ours
    assert {k: v for k, v in hub.files("tester/tiny-w4").items() if k != ".gitattributes"} == _saved(artifact)


def test_persistent_failure_is_a_clear_error(hub, artifact):
    hub.fail["commit"] = [502] * 3
    with pytest.raises(PushError) as err:
        compresskit.push(artifact, "tester/x", endpoint=hub.endpoint, token=TOKEN, attempts=3, backoff=0.0)
    assert "failed" in str(err.value) and "502" in str(err.value)
    assert len(hub.repos["tester/x"].log) == 1  # nothing half-published: only the hub's own commit


def test_bad_token_names_the_fix(hub, artifact, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(PushAuthError, match=r"HTTP 401.*--token.*HF_TOKEN"):
        _push(hub, artifact, token="wrong")
    assert not hub.repos


def test_a_repo_with_other_files_is_refused_unless_overwrite(hub, artifact, tmp_path, tiny_tokenizer):
    _, other = saved_quantized(tmp_path / "other", tiny_tokenizer, wbits=8)
    (other / "extra.txt").write_text("only in the first push")
    _push(hub, other)
    conflict = r"already holds a different model \(README.md differs; config.json differs.*--overwrite"
    with pytest.raises(RepoConflictError, match=conflict):
        _push(hub, artifact)
    repo = hub.repos["tester/tiny-w4"]
    assert len(repo.log) == 2 and "extra.txt" in hub.files("tester/tiny-w4")
    result = _push(hub, artifact, overwrite=True)
    assert result.deleted == ["extra.txt"] and len(repo.log) == 3
    assert {k: v for k, v in hub.files("tester/tiny-w4").items() if k != ".gitattributes"} == _saved(artifact)


def test_push_to_a_branch(hub, artifact):
    result = _push(hub, artifact, revision="w4g32")
    assert result.revision == "w4g32"
    assert set(hub.files("tester/tiny-w4", "w4g32")) - {".gitattributes"} == set(_saved(artifact))
    assert set(hub.files("tester/tiny-w4", "main")) == {".gitattributes"}


def test_private_on_an_existing_public_repo_refuses_and_publishes_nothing(hub, artifact):
    hub.add("tester/public", {"README.md": b"# an existing public model\n"})
    with pytest.raises(PushError, match="already exists and is public.*nothing was pushed"):
        _push(hub, artifact, repo="tester/public", private=True, overwrite=True)
    assert hub.files("tester/public") == {"README.md": b"# an existing public model\n"}
    assert not any(p.endswith("/commit/main") for _, p in hub.requests)
    _push(hub, artifact, repo="tester/public", overwrite=True)  # public, asked for public: pushed
    assert "model.safetensors" in hub.files("tester/public")


def test_a_quantized_model_goes_as_gptq_unless_asked_otherwise(hub, artifact, tmp_path, tiny_tokenizer):
    import json

    result = _push(hub, artifact, repo="tester/auto", format="auto")
    config = json.loads(hub.files("tester/auto")["config.json"])
    assert config["quantization_config"]["quant_method"] == "gptq" and result.uploaded
    assert config["quantization_config"]["checkpoint_format"] == "gptq_v2"
    card = hub.files("tester/auto")["README.md"].decode()
    assert 'from_pretrained("tester/auto")' in card and "pip install optimum gptqmodel" in card
    assert not any(name.startswith(".push-") for name in hub.files("tester/auto"))
    from conftest import make_tiny_model

    model = make_tiny_model("llama")
    compresskit.quantize(model, wbits=4, group_size=32, abits=8)  # weight-activation: GPTQ cannot hold it
    wa = compresskit.save(model, tiny_tokenizer, tmp_path / "w4a8")
    with pytest.raises(compresskit.CompresskitError, match="cannot be pushed as GPTQ.*--push-format native"):
        _push(hub, wa, repo="tester/wa", format="auto")
    assert "tester/wa" not in hub.repos
