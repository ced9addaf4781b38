"""Shared fixtures: tiny random-init models of every supported family and a tiny offline tokenizer.

Unit tests never touch the real model; they build 2-layer GQA models in code (seeded, float32).
"""
from __future__ import annotations

import os

# Triton kernels are tested on CPU tensors through the interpreter; it must be on before triton is
# imported (the same kernels run natively on a GPU: bench/kernel_speed.py --check).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

TINY_TEXT = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
    "What is the pass key? The pass key is 12345. Remember it. 0123456789 "
    "A quick brown fox jumps over the lazy dog while the river runs to the sea. "
) * 4


def make_tiny_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer trained in memory (no downloads), wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TINY_TEXT], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def make_tiny_config(family: str = "llama", vocab_size: int = 320, tie: bool = True, **overrides):
    """2 layers, hidden 64, 4 query heads over 2 KV heads (GQA), intermediate 128."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    kw = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    kw.update(overrides)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[family]
    cfg = cls(**kw)
    cfg._attn_implementation = "sdpa"
    return cfg


def make_tiny_model(family: str = "llama", seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = make_tiny_config(family, **overrides)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return model.eval()


def save_trained_tiny(path, tokenizer, layers: int = 3, steps: int = 80):
    """A tiny Llama that has learned the first 200 tokens of the held-out text by heart (the window the
    evaluation's perplexity reads first; ~1.6 after 80 steps), saved with ``tokenizer`` at ``path``:
    compressing it visibly costs perplexity (2-bit per-channel weights: ~+70%), so a gate can fail."""
    from compresskit import api

    model = make_tiny_model("llama", num_hidden_layers=layers)
    ids = tokenizer(api.heldout_text()[:5000], return_tensors="pt")["input_ids"][:, :200]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        model(ids, labels=ids).loss.backward()
        opt.step()
    model.eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture(params=["llama", "qwen2", "mistral"])
def tiny_model(request):
    return make_tiny_model(request.param)


@pytest.fixture
def tiny_llama():
    return make_tiny_model("llama")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_tokenizer):
    """A saved 3-layer tiny llama with its tokenizer (a model directory for the CLI); tests/cli/test_cli.py
    has its own."""
    path = tmp_path_factory.mktemp("src") / "tiny"
    make_tiny_model("llama", num_hidden_layers=3).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _one_torch_thread_for_unit_tests(request):
    """Unit tests use tiny tensors: intra-op threads only add overhead (a lot on a busy 2-core box).
    Integration tests on the real model keep torch's default."""
    if request.node.get_closest_marker("integration"):
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="session")
def _private_eval_cache(tmp_path_factory):
    """Evaluation rows are cached per session in a temporary directory, never in the user's cache."""
    import os

    old = os.environ.get("COMPRESSKIT_EVAL_CACHE")
    os.environ["COMPRESSKIT_EVAL_CACHE"] = str(tmp_path_factory.mktemp("eval-cache"))
    yield
    if old is None:
        os.environ.pop("COMPRESSKIT_EVAL_CACHE", None)
    else:
        os.environ["COMPRESSKIT_EVAL_CACHE"] = old


def quantize_two_ways(model: str, tmp_path, group_size: int):
    """``(A, B)``: ``compresskit quantize MODEL --method rtn --wbits 4 --no-eval`` and ``compresskit run`` of the same
    one-pass recipe (its stage kept in a work directory and saved again from there); both must exit 0."""
    from typer.testing import CliRunner

    from compresskit.cli.main import app

    a, b = tmp_path / "A", tmp_path / "B"
    result = CliRunner().invoke(app, ["quantize", model, "--method", "rtn", "--wbits", "4", "--group-size",
                                      str(group_size), "--no-eval", "--output", str(a)])
    assert result.exit_code == 0, result.output
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {model}\noutput: {b}\npasses:\n  - quantize: {{method: rtn, wbits: 4, "
                      f"group_size: {group_size}}}\n  - save\n")
    result = CliRunner().invoke(app, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    return a, b


def pytest_sessionfinish(session, exitstatus):
    """``COMPRESSKIT_REQUIRE_CROSSCHECKS=1`` (.ci/crosscheck): a skipped test fails the run, so CI cannot
    pass while the checks against peer tools silently did not run."""
    if not os.environ.get("COMPRESSKIT_REQUIRE_CROSSCHECKS"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and session.exitstatus == 0:
        session.exitstatus = 1
        reporter.write_line(f"COMPRESSKIT_REQUIRE_CROSSCHECKS: {len(skipped)} test(s) skipped; they must run here",
                            red=True)
