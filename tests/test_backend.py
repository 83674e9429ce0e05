"""The backend: found by name, options honoured, the pass framework's records and counters."""

import json
import os
import subprocess
import sys

import pytest
import torch

import flashrnn_compile
from flashrnn_compile import context, debug
from flashrnn_compile.backend import flashrnn_backend
from flashrnn_compile.context import BackendOptions, PassContext, Refusal, Rewrite


def _fresh_python(code: str) -> str:
    """Run `code` in a fresh interpreter that never imported flashrnn_compile; its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/", timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_found_by_name_in_a_fresh_interpreter():
    code = (
        "import sys, torch\n"
        "y = torch.compile(torch.nn.Linear(2, 2), backend='flashrnn')(torch.randn(1, 2))\n"
        "print(tuple(y.shape), 'flashrnn_compile' in sys.modules, torch._dynamo.config.allow_rnn)\n"
    )
    assert _fresh_python(code).split() == ["(1,", "2)", "True", "True"]


def test_allow_rnn_means_the_lstm_reaches_the_backend_in_one_graph():
    """Without allow_rnn, Dynamo graph-breaks on nn.LSTM and never resumes; loading the backend
    by name sets it, so the backend sees one graph with the torch.lstm node and the ops around."""
    code = (
        "import torch\n"
        "graphs = []\n"
        "import flashrnn_compile.passes as P\n"
        "P.PASSES[:] = [lambda gm, ctx: (graphs.append(gm), gm)[1]]\n"
        "m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LSTM(3, 4))\n"
        "torch.compile(m, backend='flashrnn', options={'inner': 'eager'})(torch.randn(5, 2, 3))\n"
        "print(len(graphs), sum('lstm' in str(n.target) for n in graphs[0].graph.nodes))\n"
    )
    assert _fresh_python(code).split() == ["1", "1"]


@pytest.mark.parametrize(
    "options,match",
    [
        ({"inner": "tvm"}, r"options\['inner'\]: expected one of \('inductor', 'aot_eager', 'eager'\)"),
        ({"plan": "fastest"}, r"options\['plan'\]: expected one of \('auto', 'reference'"),
        ({"dump_dir": 3}, r"options\['dump_dir'\]: expected a path"),
        ({"inner": "eager", "speed": 11}, r"options: unknown key\(s\) \['speed'\]"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        BackendOptions.from_dict(options)
    model = torch.compile(torch.nn.Linear(2, 2), backend="flashrnn", options=options)
    with pytest.raises(Exception, match=match):
        model(torch.randn(1, 2))


def test_dump_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FLASHRNN_DUMP_DIR", str(tmp_path))
    assert BackendOptions.from_dict(None).dump_dir == str(tmp_path)
    assert BackendOptions.from_dict({"dump_dir": "/elsewhere"}).dump_dir == "/elsewhere"


@pytest.mark.parametrize("inner", ["eager", "aot_eager", "inductor"])
def test_inner_compilers(inner):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    x = torch.randn(3, 4, requires_grad=True)
    compiled = torch.compile(model, backend="flashrnn", options={"inner": inner})
    y = compiled(x)
    (gx,) = torch.autograd.grad(y.sum(), x)
    y_ref = model(x)
    (gx_ref,) = torch.autograd.grad(y_ref.sum(), x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)


# ---- the pass framework ----------------------------------------------------------------------


def _rewrite(source, cell="lstm"):
    return Rewrite(source, cell, 1, 1, 5, 2, 1, 4, "torch.float32",
                   {"family": "reference", "params": {}, "reason": "test"}, [])


@pytest.fixture
def fake_passes(monkeypatch):
    """Replace the pass list by two recording passes; yields the list of contexts seen."""
    import flashrnn_compile.passes as P

    seen = []

    def first(gm, ctx):
        seen.append(ctx)
        ctx.rewrote(_rewrite("module"))
        ctx.rewrote(_rewrite("handwritten", "gru"))
        return gm

    def second(gm, ctx):
        calls = [n for n in gm.graph.nodes if n.op == "call_function"]
        ctx.refused("cell_loop", "the step input depends on an earlier state", calls)
        return gm

    monkeypatch.setattr(P, "PASSES", [first, second])
    return seen


def test_passes_run_in_order_and_are_counted(fake_passes):
    flashrnn_compile.reset_stats()
    lin = torch.nn.Linear(2, 2)

    def user_function(x):
        return torch.tanh(lin(x))

    torch.compile(user_function, backend="flashrnn", options={"inner": "eager"})(torch.randn(1, 2))
    assert len(fake_passes) == 1
    assert flashrnn_compile.stats() == {
        "rewritten": 2,
        "by_source": {"module": 1, "cell_loop": 0, "handwritten": 1},
        "rejected": 1,
    }
    (report,) = flashrnn_compile.reports()
    assert [r["cell"] for r in report["rewrites"]] == ["lstm", "gru"]
    assert report["refusals"][0]["reason"] == "the step input depends on an earlier state"
    assert report["refusals"][0]["user_code"][0].startswith(__file__ + ":")
    flashrnn_compile.reset_stats()
    assert flashrnn_compile.stats()["rewritten"] == 0 and flashrnn_compile.reports() == []


def test_context_rejects_unknown_sources():
    ctx = PassContext(BackendOptions())
    with pytest.raises(ValueError, match="source: expected one of"):
        ctx.rewrote(_rewrite("magic"))
    with pytest.raises(ValueError, match="source: expected one of"):
        ctx.refused("magic", "why")


def test_choose_plan_honours_options_and_device():
    ctx = PassContext(BackendOptions(plan="reference"))
    plan = context.choose_plan(ctx, "lstm", 16, 12, 64, torch.bfloat16, "cuda")
    assert plan.family == "reference" and "forced" in plan.reason
    ctx = PassContext(BackendOptions(plan="fused"))
    plan = context.choose_plan(ctx, "lstm", 16, 12, 64, torch.bfloat16, "cpu")
    assert plan.family == "reference" and "cpu" in plan.reason
    assert json.loads(plan.op_arg()) == {"family": "reference", "params": {}}


# ---- dumps -------------------------------------------------------------------------------------


def test_dump_writes_graphs_and_reports(fake_passes, tmp_path):
    model = torch.compile(torch.nn.Linear(2, 2), backend="flashrnn",
                          options={"inner": "eager", "dump_dir": str(tmp_path)})
    model(torch.randn(1, 2))
    (folder,) = list(tmp_path.iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["after.py", "before.py", "report.json", "report.md"]
    report = json.loads((folder / "report.json").read_text())
    assert len(report["rewrites"]) == 2 and len(report["refusals"]) == 1
    assert "linear(" in (folder / "before.py").read_text()
    assert "2 recurrence(s) rewritten, 1 refused" in (folder / "report.md").read_text()


def test_no_dump_unless_asked(fake_passes, tmp_path, monkeypatch):
    monkeypatch.delenv("FLASHRNN_DUMP_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    torch.compile(torch.nn.Linear(2, 2), backend="flashrnn", options={"inner": "eager"})(torch.randn(1, 2))
    assert list(tmp_path.iterdir()) == []


def test_a_failing_dump_warns_and_the_program_goes_on(fake_passes, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    model = torch.compile(torch.nn.Linear(2, 2), backend="flashrnn",
                          options={"inner": "eager", "dump_dir": str(blocker / "sub")})
    x = torch.randn(1, 2)
    with pytest.warns(RuntimeWarning, match="could not write the dump"):
        y = model(x)
    assert y.shape == (1, 2)


def test_report_markdown_lists_rewrites_and_refusals():
    ctx = PassContext(BackendOptions())
    ctx.rewrote(_rewrite("module"))
    ctx.refusals.append(Refusal("handwritten", "weights differ between steps", ["m.py:3"]))
    text = debug.report_markdown(ctx.report())
    assert "| module | lstm | 1 x 1 | 5 | 2 | 1 x 4 | torch.float32 | reference: test |" in text
    assert "| handwritten | weights differ between steps | m.py:3 |" in text


def test_backend_callable_directly():
    gm = torch.fx.symbolic_trace(torch.nn.Linear(2, 2))
    fn = flashrnn_backend(gm, [torch.randn(1, 2)], options={"inner": "eager"})
    x = torch.randn(1, 2)
    torch.testing.assert_close(fn(x), gm(x))


def test_choose_plan_only_picks_families_this_build_has(monkeypatch):
    """On CUDA the planner is asked only for implemented families; a pick without a kernel
    becomes the reference with the reason."""
    from flashrnn_compile import planner, runtime

    asked = []

    def fake_plan(cell, batch, heads, head_dim, dtype, gpu=None, *, families=None):
        asked.append(families)
        return planner.Plan("fused_cluster", {"CLUSTER": 8}, "splits R over a cluster")

    monkeypatch.setattr(runtime, "implemented_families", lambda: ("alternating", "reference"))
    monkeypatch.setattr(planner, "plan", fake_plan)
    plan = context.choose_plan(PassContext(BackendOptions()), "lstm", 16, 1, 768, torch.bfloat16, "cuda:0")
    assert asked == [("alternating", "reference")]
    assert plan.family == "reference" and "fused_cluster" in plan.reason
    context.choose_plan(PassContext(BackendOptions(plan="alternating")), "lstm", 16, 1, 768, torch.bfloat16, "cuda:0")
    assert asked[-1] == ("alternating",)


# ---- Inductor's FX-graph cache is salted with our sources ---------------------------------------


def _inductor_cache_counts(monkeypatch, cache_dir, source_hash):
    """Compile x.sin() + 1 through the backend (inner Inductor, FX-graph cache in cache_dir, our
    sources hashing to `source_hash`); Inductor's (hits, misses) for that compile."""
    from torch._dynamo.utils import counters

    from flashrnn_compile import backend

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache_dir))
    monkeypatch.setattr(backend, "_source_hash", lambda: source_hash)
    torch._dynamo.reset()
    counters.clear()
    with torch._inductor.config.patch(fx_graph_cache=True, fx_graph_remote_cache=False):
        fn = torch.compile(lambda x: x.sin() + 1, backend="flashrnn", options={"inner": "inductor"})
        x = torch.randn(5)
        torch.testing.assert_close(fn(x), x.sin() + 1)
    return counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]


def test_inductor_cache_is_keyed_on_our_sources(monkeypatch, tmp_path):
    """The same sources hit the cache; other sources (an upgrade, whose fake kernels may give other
    strides) miss it: a stale compiled graph is never reused."""
    assert _inductor_cache_counts(monkeypatch, tmp_path, "v1") == (0, 1)
    assert _inductor_cache_counts(monkeypatch, tmp_path, "v1") == (1, 0)
    assert _inductor_cache_counts(monkeypatch, tmp_path, "v2") == (0, 1)


def test_cache_salt_keeps_the_users_pass():
    """A user's CustomGraphPass still runs and its uuid stays in the key; a plain function pass
    (which already keeps Inductor from caching) is left alone."""
    from torch._inductor.custom_graph_pass import CustomGraphPass

    from flashrnn_compile.backend import _cache_salt_patch, _source_hash

    seen = []

    class UserPass(CustomGraphPass):
        def __call__(self, graph):
            seen.append(graph)

        def uuid(self):
            return "user-pass-1"

    with torch._inductor.config.patch(post_grad_custom_pre_pass=UserPass()):
        salt = _cache_salt_patch()["post_grad_custom_pre_pass"]
        salt("graph")
        assert seen == ["graph"]
        assert _source_hash() in salt.uuid() and "user-pass-1" in salt.uuid()
    with torch._inductor.config.patch(post_grad_custom_pre_pass=lambda graph: None):
        assert _cache_salt_patch() == {}
    assert _source_hash() in _cache_salt_patch()["post_grad_custom_pre_pass"].uuid()
