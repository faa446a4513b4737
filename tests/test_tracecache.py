"""The trace cache (issue 19): a hit equals a fresh trace; other versions, shapes and broken entries miss and
say why; concurrent writers leave a readable entry; only library and zoo specs are cached."""
import gzip
import json
import multiprocessing
import os
import subprocess
import sys
import warnings

import pandas as pd
import pytest

from roofline import tracecache
from roofline.analysis import analyze
from roofline.cli import main
from roofline.train import analyze_train

SPEC = "zoo:convnet"
MIXTRAL = ("hf:mixtral?num_hidden_layers=1&hidden_size=64&intermediate_size=96&num_attention_heads=4"
           "&num_key_value_heads=2&num_local_experts=4&vocab_size=256")


def _forbid_tracing(monkeypatch):
    """Make any trace fail, so a result can only have come from the cache."""
    import roofline.trace
    import roofline.train

    def refuse(*args, **kwargs):
        raise AssertionError("traced although the cache holds this model")

    monkeypatch.setattr(roofline.trace, "trace", refuse)
    monkeypatch.setattr(roofline.train, "trace_train", refuse)


def _same(a, b):
    assert a.trace.records == b.trace.records
    assert a.trace.layers == b.trace.layers
    assert a.trace.fused == b.trace.fused
    assert a.trace.layer_params == b.trace.layer_params
    assert a.trace.unsupported == b.trace.unsupported
    assert a.trace.moe == b.trace.moe
    pd.testing.assert_frame_equal(a.layers, b.layers)
    assert a.totals == b.totals


@pytest.mark.parametrize("spec, options", [
    ("zoo:convnet", {}),
    ("zoo:tiny-transformer", {"batch": 2, "seq_len": 16}),
    ("torchvision:mobilenet_v2", {"batch": 2}),
    (MIXTRAL, {"seq_len": 8}),
])
def test_a_hit_is_the_fresh_trace(spec, options, monkeypatch):
    fresh = analyze(spec, precision="fp16", warn_unsupported=False, **options)
    first = analyze(spec, precision="fp16", cache=True, warn_unsupported=False, **options)
    assert tracecache.key_for(spec, None, "inference", {"attention": "fused", **options}).path().is_file()
    _forbid_tracing(monkeypatch)
    hit = analyze(spec, precision="fp16", cache=True, warn_unsupported=False, **options)
    _same(fresh, first)
    _same(fresh, hit)
    if spec.startswith("hf:mixtral"):
        assert hit.trace.moe is not None and hit.trace.moe.experts == 4


def test_a_training_step_hit_is_the_fresh_trace(monkeypatch):
    fresh = analyze_train("zoo:mlp", precision="bf16", optimizer="sgd")
    analyze_train("zoo:mlp", precision="bf16", optimizer="sgd", cache=True)
    _forbid_tracing(monkeypatch)
    hit = analyze_train("zoo:mlp", precision="bf16", optimizer="sgd", cache=True)
    _same(fresh, hit)
    assert hit.trace.training == fresh.trace.training
    assert hit.totals["peak_memory_bytes"] == fresh.totals["peak_memory_bytes"]
    with pytest.raises(AssertionError, match="traced although"):  # another optimizer is another trace
        analyze_train("zoo:mlp", precision="bf16", optimizer="adamw", cache=True)


def test_one_entry_serves_every_precision(monkeypatch):
    analyze(SPEC, cache=True)
    _forbid_tracing(monkeypatch)
    for precision in ("fp32", "bf16", "int8", "w4a16"):
        _same(analyze(SPEC, precision=precision, cache=True), analyze(SPEC, cache=True).with_precision(precision))
    assert len(tracecache.entries()) == 1


def test_another_shape_or_option_misses(monkeypatch):
    analyze(SPEC, cache=True)
    calls = []
    import roofline.trace

    real = roofline.trace.trace
    monkeypatch.setattr(roofline.trace, "trace", lambda *a, **k: calls.append(1) or real(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a different key is a plain miss: nothing to warn about
        analyze(SPEC, cache=True, batch=4)
        analyze(SPEC, cache=True, input_shape="1x3x64x64")
        analyze(SPEC, cache=True, attention="eager")
        analyze(SPEC, cache=True)  # the first entry is still there
    assert len(calls) == 3
    assert len(tracecache.entries()) == 4


@pytest.mark.parametrize("package", ["torch", "transformers", "roofline_source"])
def test_an_entry_from_other_versions_is_rebuilt_with_a_warning(package, monkeypatch):
    analyze(SPEC, cache=True)
    current = tracecache.versions()
    monkeypatch.setattr(tracecache, "versions", lambda: {**current, package: "0.0-other"})
    with pytest.warns(UserWarning, match=f"ignoring trace cache entry .*{'source files changed' if package == 'roofline_source' else package}"):
        rebuilt = analyze(SPEC, cache=True)
    _same(rebuilt, analyze(SPEC))
    stored = json.loads(gzip.decompress(tracecache.entries()[0].read_bytes()))
    assert stored["key"]["versions"][package] == "0.0-other"  # rebuilt in place, under the versions in force


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not json", "wrong shape", "bad layer"])
def test_a_corrupt_entry_is_rebuilt_with_a_warning(damage):
    analyze(SPEC, cache=True)
    (path,) = tracecache.entries()
    data = path.read_bytes()
    payload = json.loads(gzip.decompress(data))
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif damage == "not json":
        path.write_bytes(gzip.compress(b"{not json"))
    elif damage == "wrong shape":
        payload["value"]["records"][0] = payload["value"]["records"][0][:3]
        path.write_bytes(gzip.compress(json.dumps(payload).encode()))
    else:
        value = payload["value"]
        value["records"][0][value["record_fields"].index("layer")] = "no.such.layer"
        path.write_bytes(gzip.compress(json.dumps(payload).encode()))
    with pytest.warns(UserWarning, match="ignoring trace cache entry .*tracing again"):
        rebuilt = analyze(SPEC, cache=True)
    _same(rebuilt, analyze(SPEC))
    assert tracecache.load(tracecache.key_for(SPEC, None, "inference", {"attention": "fused"})) is not None


def test_concurrent_writers_leave_a_readable_entry():
    key = tracecache.key_for(SPEC, None, "inference", {"attention": "fused"})
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_store_repeatedly, args=(SPEC, 15)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0  # every read in every worker, between the others' writes, checked out
    assert tracecache.load(key) is not None
    _same(analyze(SPEC), analyze(SPEC, cache=True))
    assert [p.name for p in tracecache.cache_dir().iterdir()] == [key.path().name]  # no temporary file left


def _store_repeatedly(spec: str, rounds: int) -> None:
    """In a child process: trace once, then write the entry `rounds` times, checking each read."""
    result = analyze(spec)
    key = tracecache.key_for(spec, None, "inference", {"attention": "fused"})
    for _ in range(rounds):
        tracecache.store(key, result.trace)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a torn read would warn
            assert tracecache.load(key) is not None


def test_warnings_of_the_build_are_replayed_on_a_hit():
    spec = "zoo:convnet"
    with pytest.warns(UserWarning, match="--seq-len"):
        analyze(spec, cache=True, seq_len=32)
    with pytest.warns(UserWarning, match="--seq-len"):
        analyze(spec, cache=True, seq_len=32)


def test_model_files_and_modules_are_never_cached(tmp_path):
    builder = tmp_path / "mine.py"
    builder.write_text("import torch\n\ndef build():\n    return torch.nn.Linear(4, 4), [torch.randn(2, 4)]\n")
    analyze(f"{builder}:build", cache=True)
    import torch

    analyze(torch.nn.Linear(4, 4), [torch.randn(2, 4)], cache=True)
    assert tracecache.entries() == []
    assert not tracecache.is_cacheable(f"{builder}:build")
    assert not tracecache.is_cacheable(SPEC, inputs=[torch.zeros(1)])
    assert tracecache.is_cacheable("hf:llama?num_hidden_layers=2")


def test_an_unwritable_cache_warns_and_the_result_stands(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("ROOFLINE_TRACE_DIR", str(blocker / "traces"))
    with pytest.warns(UserWarning, match="could not write the trace cache"):
        result = analyze(SPEC, cache=True)
    _same(result, analyze(SPEC))


def test_clear_removes_only_the_caches_files(capsys):
    analyze(SPEC, cache=True)
    analyze(SPEC, cache=True, batch=2)
    directory = tracecache.cache_dir()
    foreign = directory / "MY_NOTES.txt"
    foreign.write_text("mine")
    lookalike = directory / ("0" * 63 + ".trace.json.gz")  # not 64 hex digits: not ours
    lookalike.write_text("mine too")
    assert main(["cache", "info"]) == 0
    assert "2 traces" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert "removed 2 traces" in capsys.readouterr().out
    assert sorted(p.name for p in directory.iterdir()) == sorted([foreign.name, lookalike.name])


def test_progress_reaches_the_total():
    seen = []
    analyze("zoo:tiny-transformer", progress=lambda done, total: seen.append((done, total)))
    totals = {total for _, total in seen}
    assert len(totals) == 1
    total = totals.pop()
    assert seen[-1] == (total, total)
    dones = [done for done, _ in seen]
    assert dones == sorted(dones) and all(done < total for done in dones[:-1])
    steps = []
    analyze_train("zoo:mlp", progress=lambda done, total: steps.append((done, total)))
    assert steps and steps[-1][0] == steps[-1][1]


def test_cli_no_cache_neither_reads_nor_writes(capsys, tmp_path):
    assert main(["predict", SPEC, "--hw", "h100-sxm", "--no-cache"]) == 0
    assert tracecache.entries() == []
    uncached = capsys.readouterr().out
    assert main(["predict", SPEC, "--hw", "h100-sxm"]) == 0
    first = capsys.readouterr().out
    assert first == uncached
    assert len(tracecache.entries()) == 1
    for command in (["analyze", SPEC], ["explain", SPEC, "--hw", "t4"], ["compare", SPEC, "--hw", "t4,l4"],
                    ["report", SPEC, "--hw", "t4", "--no-measure", "--no-progress", "--out", str(tmp_path / "r")]):
        assert main(command) == 0
    assert len(tracecache.entries()) == 1  # all five commands share the entry
    capsys.readouterr()
    assert main(["predict", SPEC, "--hw", "h100-sxm"]) == 0
    assert capsys.readouterr().out == first


def test_a_cli_hit_imports_no_torch():
    """A second predict reads the trace and re-costs it: neither torch nor the model's library is imported."""
    command = ["predict", "hf:gpt2?n_layer=2", "--hw", "a100-80gb-sxm", "--precision", "fp16", "--format", "json"]
    code = ("import json, sys; from roofline.cli import main; rc = main(%r); "
            "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules, 'transformers': 'transformers' in sys.modules}))")
    env = dict(os.environ)
    runs = [subprocess.run([sys.executable, "-c", code % (command,)], capture_output=True, text=True, env=env, check=True)
            for _ in range(2)]
    first, second = (json.loads(run.stdout.strip().splitlines()[-1]) for run in runs)
    assert first == {"rc": 0, "torch": True, "transformers": True}
    assert second == {"rc": 0, "torch": False, "transformers": False}
    assert runs[0].stdout.splitlines()[:-1] == runs[1].stdout.splitlines()[:-1]


LLM_SMALL = ("hf:llama?num_hidden_layers=2&hidden_size=128&intermediate_size=256&num_attention_heads=4"
             "&num_key_value_heads=2&vocab_size=512")


@pytest.mark.parametrize("spec", [LLM_SMALL, MIXTRAL])
def test_an_llm_hit_is_the_fresh_traces(spec, monkeypatch):
    from roofline import llm

    options = {"prompt_len": 32, "gen_len": 8, "batch": 2, "progress": False}
    fresh = llm.trace_llm(spec, **options)
    llm.trace_llm(spec, cache=True, **options)
    _forbid_tracing(monkeypatch)
    monkeypatch.setattr(llm, "trace", lambda *a, **k: pytest.fail("traced although the cache holds these passes"))
    hit = llm.trace_llm(spec, cache=True, **options)
    assert hit.prefill.records == fresh.prefill.records and hit.prefill.layers == fresh.prefill.layers
    assert [(c, t.records, t.fused) for c, t in hit.decode] == [(c, t.records, t.fused) for c, t in fresh.decode]
    assert (hit.kv_elements_per_token, hit.plan, hit.moe) == (fresh.kv_elements_per_token, fresh.plan, fresh.moe)
    assert (hit.model, hit.batch, hit.prompt_len, hit.gen_len, hit.attention) == (
        fresh.model, fresh.batch, fresh.prompt_len, fresh.gen_len, fresh.attention)
    from roofline.hardware import load_profile
    from roofline.precision import get_precision

    profile, bf16 = load_profile("h100-sxm"), get_precision("bf16")
    assert llm.report_for(hit, profile, bf16, tp=2).metrics == llm.report_for(fresh, profile, bf16, tp=2).metrics


def test_a_routing_skew_set_around_the_trace_is_part_of_the_key():
    from roofline import moe

    uniform = analyze(MIXTRAL, cache=True, seq_len=8, warn_unsupported=False)
    with moe.routing(moe.parse_skew("1.5")):
        skewed = analyze(MIXTRAL, cache=True, seq_len=8, warn_unsupported=False)
        fresh = analyze(MIXTRAL, seq_len=8, warn_unsupported=False)
    assert len(tracecache.entries()) == 2
    _same(skewed, fresh)
    assert skewed.totals["bytes_read"] != uniform.totals["bytes_read"]  # the skew touches fewer experts' weights
