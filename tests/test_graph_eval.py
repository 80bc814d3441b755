"""Edge circuits evaluated exactly: the graph's shape, and the invariants that pin the evaluation
rule to runs computed another way (plain runs, node-level patches with `hooks.patch`, circuits)."""

import pytest
import torch

import actpatch as ap
from actpatch import hooks
from actpatch.circuits import components
from actpatch.circuits.evaluate import Ablator
from actpatch.graph import EdgeError, EdgeRuns, Graph, evaluate
from actpatch.hooks.edges import edge_hooks
from actpatch.sites import Site
from tiny import FAMILIES, tiny_model, tiny_pairs, tiny_task, with_answers

ATOL = 1e-5  # float32 logits of O(1-10): the rule reorders sums, so only rounding differs


def setup(family):
    model, pairs = tiny_task(family)
    return model, pairs, EdgeRuns.prepare(model, pairs)


def without_inputs_of(graph, node):
    """Every edge except those into `node`."""
    circuit = graph.full()
    circuit[:, graph.receivers_of(node)] = False
    return circuit


def patched_clean(model, pairs, values):
    with hooks.patch(model, values):
        return model.last_logits(pairs.clean)


def corrupt_values(model, pairs, sites):
    return hooks.capture(model, pairs.corrupt, sites)


# --- the graph --------------------------------------------------------------------------------


def test_graph_counts_and_names_follow_eap_ig():
    graph = Graph(n_layers=2, n_heads=4, d_model=32, parallel=False)
    # layer 0 heads: 12 receivers × input; m0: input + 4 heads; layer 1 heads: 12 × 6 senders;
    # m1: 10 senders; logits: all 11 senders
    assert graph.n_edges == 12 + 5 + 72 + 10 + 11
    names = graph.edge_names()
    assert names[0] == "input->a0.h0<q>" and "a0.h2->a1.h0<v>" in names and "m1->logits" in names
    assert "a0.h0->m0" in names and "a1.h0->a1.h1<q>" not in names
    parallel = Graph(n_layers=2, n_heads=4, d_model=32, parallel=True)
    assert parallel.n_edges == graph.n_edges - 2 * 4
    assert "a0.h0->m0" not in parallel.edge_names() and "a0.h0->m1" in parallel.edge_names()


def test_graph_of_a_model_reads_its_sizes_and_parallelism():
    assert Graph.of(tiny_model("pythia_parallel")).parallel
    assert not Graph.of(tiny_model("gpt_neox")).parallel
    assert Graph.of(tiny_model("gemma3")).cfg == {
        "n_layers": 2,
        "n_heads": 4,
        "parallel_attn_mlp": False,
        "d_model": 32,
    }


@pytest.mark.parametrize(
    "name, message",
    [
        ("a0.h9->m1", r"not a sender.*4 heads per layer \(h0–h3\)"),
        ("a0.hx->m1", "not a sender.*closest"),
        ("a1.h0->a0.h1<q>", "no edge a1.h0->a0.h1<q>.*reads the residual stream before"),
        ("input-a0.h0<q>", "write SENDER->RECEIVER"),
        ("input->a0.h0", "not a receiver.*a0.h0<q>"),
    ],
)
def test_edges_that_do_not_exist_are_refused_by_name(name, message):
    with pytest.raises(EdgeError, match=message):
        Graph.of(tiny_model("gpt2")).circuit([name])


def test_parallel_models_have_no_edge_from_a_layer_to_its_own_mlp():
    with pytest.raises(EdgeError, match="run in parallel"):
        Graph.of(tiny_model("pythia_parallel")).circuit(["a0.h0->m0"])


# --- the exact ends ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_all_edges_is_the_clean_run_and_no_edges_the_corrupt_run(family):
    model, _pairs, runs = setup(family)
    logits = runs.logits(torch.stack([runs.graph.full(), runs.graph.empty()]))
    torch.testing.assert_close(logits[0], runs.base.clean_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits[1], runs.base.corrupt_logits, atol=ATOL, rtol=0)
    assert hooks.attached_hooks(model) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_head_outputs_sum_to_what_attention_adds(family):
    """Each head's output (o_proj on its z alone, minus o_proj(0); Gemma: times the post-norm's
    scale) summed over heads, plus the bias, is the attention output the layer adds."""
    model, pairs, runs = setup(family)
    graph, layer = runs.graph, 1
    first = graph.sender(f"a{layer}.h0")
    heads = runs.clean[first : first + graph.n_heads].sum(0)
    attn_out = hooks.capture(model, pairs.clean, [Site("attn_out", layer)])[Site("attn_out", layer)]
    o_proj = model.submodule(layer, model.arch.o_proj)
    bias = o_proj.bias if getattr(o_proj, "bias", None) is not None else 0
    torch.testing.assert_close(heads + bias, attn_out, atol=1e-6, rtol=0)


# --- edges into one node = the node-level patch of its input ----------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_the_edges_into_an_mlp_is_patching_its_output_from_the_corrupt_run(family):
    # An MLP acts on each position alone: its output from the corrupt resid_mid is its corrupt output.
    model, pairs, runs = setup(family)
    got = runs.logits(without_inputs_of(runs.graph, "m0")[None])[0]
    site = Site("mlp_out", 0)
    torch.testing.assert_close(
        got, patched_clean(model, pairs, corrupt_values(model, pairs, [site])), atol=ATOL, rtol=0
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_the_edges_into_the_logits_is_the_corrupt_run(family):
    _model, _pairs, runs = setup(family)
    got = runs.logits(without_inputs_of(runs.graph, "logits")[None])[0]
    torch.testing.assert_close(got, runs.base.corrupt_logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_removing_one_heads_q_k_or_v_edges_is_patching_that_input(family, which):
    """A head's q input read from the corrupt residual stream (every other edge in) gives the
    corrupt run's q for that head. k and v are per KV head: removing them for every query head of
    one group is the k/v site patch of that KV head."""
    model, pairs, runs = setup(family)
    graph, dims, layer = runs.graph, model.dims, 1
    group, kv = dims.n_heads // dims.n_kv_heads, min(1, dims.n_kv_heads - 1)
    query_heads = (
        [2] if which == "q" else range(kv * group, (kv + 1) * group)
    )  # KV head kv's query heads
    circuit = graph.full()
    for h in query_heads:
        circuit[:, graph.receiver(f"a{layer}.h{h}<{which}>")] = False
    got = runs.logits(circuit[None])[0]
    site = Site(which, layer, head=2 if which == "q" else kv)
    want = patched_clean(model, pairs, corrupt_values(model, pairs, [site]))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert not torch.allclose(got, runs.base.clean_logits, atol=1e-3)  # the patch did something


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma3"])
def test_under_grouped_query_attention_each_query_head_has_its_own_keys(family):
    """Removing the k edges of one query head changes only that head's z (keys from the corrupt
    stream for it alone): computed by hand as the group's k patch read at that head's z only."""
    model, pairs, runs = setup(family)
    graph, layer, head = runs.graph, 1, 0
    circuit = graph.full()
    circuit[:, graph.receiver(f"a{layer}.h{head}<k>")] = False
    got = runs.logits(circuit[None])[0]
    kv_site = Site("k", layer, head=head // (model.dims.n_heads // model.dims.n_kv_heads))
    z_site = Site("head", layer, head=head)
    with hooks.patch(model, corrupt_values(model, pairs, [kv_site])):
        z = hooks.capture(model, pairs.clean, [z_site])
    torch.testing.assert_close(got, patched_clean(model, pairs, z), atol=ATOL, rtol=0)


# --- node circuits ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "gemma3"])
def test_a_node_circuit_is_the_edge_circuit_between_its_nodes(family):
    model, pairs, runs = setup(family)
    nodes = ["input", "a0.h1", "a0.h3", "m0", "a1.h0", "a1.h2", "logits"]
    got = runs.logits(runs.graph.node_circuit(nodes)[None])[0]
    sites = [
        Site("resid_pre", 0),
        Site("head", 0, head=1),
        Site("head", 0, head=3),
        Site("mlp_out", 0),
        Site("head", 1, head=0),
        Site("head", 1, head=2),
    ]
    want = Ablator(model, pairs, components(model)).logits(sites, "denoise")
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_gemma_node_circuits_of_whole_layers_match_component_ablation():
    """Gemma's rule gives a head outside the circuit its corrupt output *with the corrupt run's
    post-norm scale*; patching z instead rescales it by the mixed layer's norm. They agree when a
    layer's heads are all in or all out, which pins the rule without re-deriving it."""
    model, pairs, runs = setup("gemma3")
    heads = [f"a1.h{h}" for h in range(4)]
    got = runs.logits(runs.graph.node_circuit(["input", "m0", *heads, "logits"])[None])[0]
    sites = [Site("resid_pre", 0), Site("mlp_out", 0)] + [Site("head", 1, head=h) for h in range(4)]
    want = Ablator(model, pairs, components(model)).logits(sites, "denoise")
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


# --- ablations, the public call, and hygiene ----------------------------------------------------


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_no_edges_under_an_ablation_is_every_sender_ablated(ablation):
    """With no edges every receiver reads Σ of ablated sender outputs (plus constants): for the
    logits that is the final norm of the ablated residual stream, computed here by hand."""
    model, pairs = tiny_task("llama")
    runs = EdgeRuns.prepare(model, pairs, ablation=ablation)
    got = runs.logits(runs.graph.empty()[None])[0]
    want = model.unembed(runs.off.sum(0)[:, -1])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(
        runs.logits(runs.graph.full()[None])[0], runs.base.clean_logits, atol=ATOL, rtol=0
    )


def test_evaluate_takes_names_and_reports_every_metric():
    model, pairs = tiny_task("gpt2")
    graph = Graph.of(model)
    full = evaluate(model, pairs, graph.full())
    assert full.sel(metric="norm_logit_diff").item() == pytest.approx(1.0, abs=1e-5)
    assert evaluate(model, pairs, []).sel(metric="norm_logit_diff").item() == pytest.approx(
        0.0, abs=1e-5
    )
    some = evaluate(model, pairs, ["input->a0.h0<q>", "a0.h0->logits"])
    assert some.attrs["n_edges"] == 2 and set(some.coords["metric"].values) == set(ap.METRICS)


def test_an_error_inside_an_edge_forward_leaves_no_hook_behind():
    model, pairs, runs = setup("llama")
    plan = runs.plan(1, absent=torch.ones(1, *runs.graph.exists.shape))
    plan.off = plan.off[
        :, :, :2
    ]  # values for 2 positions of 6: the first receiver cannot subtract them
    with pytest.raises(RuntimeError), edge_hooks(model, plan):
        model.hf(input_ids=pairs.clean, use_cache=False)
    assert hooks.attached_hooks(model) == 0
    with pytest.raises(EdgeError):
        evaluate(model, pairs, ["m1->m0"])
    assert hooks.attached_hooks(model) == 0


def test_under_a_noise_corruption_no_edges_is_the_noisy_run():
    model = tiny_model("gpt2")
    pairs = ap.gaussian_noise(model, tiny_pairs(), "all")
    model, pairs = with_answers(model, pairs)
    runs = EdgeRuns.prepare(model, pairs)
    logits = runs.logits(torch.stack([runs.graph.full(), runs.graph.empty()]))
    torch.testing.assert_close(logits[1], model.last_logits(pairs.corrupt_run), atol=ATOL, rtol=0)
    torch.testing.assert_close(logits[0], model.last_logits(pairs.clean_run), atol=ATOL, rtol=0)


def test_stacking_circuits_in_chunks_changes_nothing():
    _model, _pairs, runs = setup("qwen2")
    torch.manual_seed(2)
    circuits = runs.graph.exists & (torch.rand(5, *runs.graph.exists.shape) < 0.5)
    torch.testing.assert_close(
        runs.logits(circuits, chunk=2), runs.logits(circuits), atol=ATOL, rtol=0
    )
    with pytest.raises(ValueError, match="chunk must be a positive number"):
        runs.logits(circuits, chunk=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_fast_per_head_path_gives_the_plain_paths_logits(family):
    """Per-head q/k/v from the projections' head rows (attention on H/KV copies) and head outputs
    from o_proj's head columns give what attention expanded H times and o_proj on a block input
    give: sparse, dense and fractional circuits."""
    model, _pairs, runs = setup(family)
    torch.manual_seed(0)
    share = torch.tensor([0.05, 0.3, 0.6, 0.95])[:, None, None]
    circuits = (runs.graph.exists & (torch.rand(4, *runs.graph.exists.shape) < share)).double()
    circuits = torch.cat(
        [
            circuits,
            runs.graph.exists.double()[None]
            * torch.rand(1, *runs.graph.exists.shape, dtype=torch.float64),
        ]
    )
    torch.testing.assert_close(
        runs.logits(circuits), runs.logits(circuits, engine="reference"), atol=ATOL, rtol=0
    )
    assert hooks.attached_hooks(model) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_the_recording_runs_give_the_baseline_bit_for_bit(family):
    """EdgeRuns.prepare takes its baseline from the forwards that record the senders' outputs."""
    from actpatch.engine import collect

    model, pairs, runs = setup(family)
    base = collect.baseline(model, pairs, check=False)
    assert torch.equal(runs.base.clean_logits, base.clean_logits) and torch.equal(
        runs.base.corrupt_logits, base.corrupt_logits
    )
