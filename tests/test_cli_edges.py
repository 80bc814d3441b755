"""`actpatch circuit --level edge` on a tiny GPT-2 saved as a checkpoint folder: the outputs it
writes, that graph.json marks exactly the circuit it evaluated, that faithfulness.csv agrees with
`graph.evaluate`, that --import reproduces a run, and the refusals."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

import actpatch as ap
from actpatch import graph
from actpatch.cli import common
from command_line import edge_run, run

PERCENT = "20"  # of the tiny GPT-2's 46 edges: 9 ranked, 7 left after pruning
NAME = "ioi_edge_eap.html"


@pytest.fixture(scope="module")
def scored(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("edges")
    result = edge_run(tiny_folder, out, "--method", "eap", "--percent", PERCENT)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def model_and_pairs(tiny_folder):
    spec = common.build_experiment(
        {"model_name": tiny_folder, "task": "ioi", "prompts": 4, "check_baseline": False},
        defaults={"sweep": {"site": "head"}},
    )
    return common.load(spec)


def in_graph(data):
    return {name for name, edge in data["edges"].items() if edge["in_graph"]}


def test_writes_the_graph_the_table_the_curve_and_one_page(scored):
    assert sorted(p.name for p in scored.iterdir()) == [
        "faithfulness.csv",
        "graph.json",
        "ioi_edge_eap.html",
        "ioi_edge_eap.nc",
    ]
    table = pd.read_csv(scored / "faithfulness.csv")
    assert (
        list(table.columns[:3]) == ["percent", "edges", "faithfulness"]
        and "norm_logit_diff" in table.columns
    )
    assert list(table["percent"]) == sorted({*graph.MIB_PERCENTS, float(PERCENT)})
    assert table["faithfulness"].iloc[-1] == pytest.approx(1.0)  # every edge: the clean run


def test_graph_json_marks_exactly_the_evaluated_circuit_and_its_nodes(scored, model_and_pairs):
    model, _ = model_and_pairs
    data = json.loads((scored / "graph.json").read_text())
    scores, _ = graph.load_graph(scored / "graph.json", model)
    evaluated = graph.top_edges(scores, percent=float(PERCENT))
    assert in_graph(data) == set(scores.graph.names(evaluated)) and bool(evaluated.any())
    assert (
        graph.top_edges(scores, percent=float(PERCENT), prune=False).sum() > evaluated.sum()
    )  # pruning did remove some
    table = pd.read_csv(scored / "faithfulness.csv").set_index("percent")
    assert table.loc[float(PERCENT), "edges"] == len(in_graph(data))
    touched = {
        node for name in in_graph(data) for node in re.sub(r"<[qkv]>$", "", name).split("->")
    }
    assert touched and all(data["nodes"][node]["in_graph"] for node in touched)
    assert {n for n, node in data["nodes"].items() if node["in_graph"]} - touched <= {
        "logits"
    }  # EAP-IG: logits always


def test_the_percent_row_is_graph_evaluate_of_that_circuit(scored, model_and_pairs):
    model, pairs = model_and_pairs
    _, circuit = graph.load_graph(scored / "graph.json", model)
    g = graph.Graph.of(model)
    m = {
        name: float(graph.evaluate(model, pairs, c, check_baseline=False).sel(metric="logit_diff"))
        for name, c in (("circuit", circuit), ("empty", g.empty()), ("full", g.full()))
    }
    row = pd.read_csv(scored / "faithfulness.csv").set_index("percent").loc[float(PERCENT)]
    assert row["logit_diff"] == pytest.approx(m["circuit"], abs=1e-5)
    assert row["faithfulness"] == pytest.approx(
        (m["circuit"] - m["empty"]) / (m["full"] - m["empty"]), abs=1e-5
    )


def test_importing_the_exported_graph_reproduces_the_curve(scored, tiny_folder, tmp_path):
    result = edge_run(
        tiny_folder, tmp_path, "--import", str(scored / "graph.json"), "--percent", PERCENT
    )
    assert result.exit_code == 0, result.output
    own = len(
        in_graph(json.loads((scored / "graph.json").read_text()))
    )  # the exported circuit, pruned already
    assert own > 0 and f"the file's own circuit: {own} edges" in result.output
    mine, theirs = (pd.read_csv(folder / "faithfulness.csv") for folder in (scored, tmp_path))
    pd.testing.assert_frame_equal(theirs, mine, atol=1e-6)
    imported, exported = (
        json.loads((folder / "graph.json").read_text()) for folder in (tmp_path, scored)
    )
    assert in_graph(imported) == in_graph(exported)
    assert (tmp_path / "ioi_edge_import.html").exists() and (
        tmp_path / "ioi_edge_import.nc"
    ).exists()


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.scripts_with_src = 0

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        self.links += [v for k, v in values.items() if k in ("src", "href") and v]
        self.scripts_with_src += tag == "script" and "src" in values


def test_the_page_needs_no_network_and_shows_curve_and_circuit(scored):
    page = (scored / NAME).read_text()
    links = _Links()
    links.feed(
        page
    )  # tags only: plotly.js's own strings (map attributions) are script text, not links
    assert (
        not [link for link in links.links if re.match(r"\s*(https?:)?//", link)]
        and links.scripts_with_src == 0
    )
    assert "plotly.js v" in page  # inlined
    assert (
        "Faithfulness against circuit size: CPR" in page and "The circuit at 20 % of edges" in page
    )
    assert "percent of edges (log scale)" in page
    assert (
        r"-\u003elogits\u003cbr\u003escore" in page
    )  # an edge's hover text, as plotly escapes it in its JSON


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--method", "eapx"],
            r"unknown --method 'eapx': use one of eap, eap-ig-inputs, eap-ig-activations, clean-corrupted, exact",
        ),
        (["--percent", "0"], r"--percent 0 is outside \(0, 100\]"),
        (["--percent", "150"], r"--percent 150 is outside \(0, 100\]"),
        (
            ["--method", "eap", "--import", "GRAPH"],
            r"--method scores the edges and --import reads scores from a file: give one",
        ),
        (
            ["--method", "eap", "--steps", "3"],
            r"--steps sets the interpolation points of eap-ig-inputs",
        ),
        (["--recovery", "0.5"], r"--recovery applies to --level node"),
        (
            ["--import", "OTHER"],
            r"is the graph of a model with \{'n_layers': 3.* score the edges on this model",
        ),
        (
            ["--method", "eap", "--out", "SCORED"],
            r"graph.json exists \(an earlier run's output\): add --overwrite",
        ),
    ],
)
def test_bad_inputs_exit_2_with_the_fix(args, message, tiny_folder, scored, tmp_path):
    other = json.loads((scored / "graph.json").read_text())
    other["cfg"]["n_layers"] = 3
    (tmp_path / "other.json").write_text(json.dumps(other))
    swap = {
        "GRAPH": str(scored / "graph.json"),
        "OTHER": str(tmp_path / "other.json"),
        "SCORED": str(scored),
    }
    result = edge_run(tiny_folder, tmp_path / "out", *[swap.get(a, a) for a in args])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and re.search(message, result.stderr), (
        result.stderr
    )


def test_edge_flags_at_node_level_ask_for_level_edge(tiny_folder, tmp_path):
    result = run("circuit", "--model", tiny_folder, "--percent", "5", "--out", str(tmp_path))
    assert (
        result.exit_code == 2
        and "--percent applies to edge circuits: add --level edge" in result.stderr
    )


def test_ci_puts_intervals_on_the_curve_and_on_cpr_and_cmd(tiny_folder, tmp_path, scored):
    result = edge_run(
        tiny_folder,
        tmp_path,
        "--method",
        "eap",
        "--percent",
        PERCENT,
        "--ci",
        "0.9",
        "--n-boot",
        "200",
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"CPR [0-9.]+ \[[0-9.]+, [0-9.]+\], CMD", result.output)
    table = pd.read_csv(tmp_path / "faithfulness.csv")
    assert {"faithfulness_lo", "faithfulness_hi"} <= set(table.columns)
    assert (table["faithfulness_lo"] <= table["faithfulness"] + 1e-12).all()
    assert (table["faithfulness"] <= table["faithfulness_hi"] + 1e-12).all()
    plain = pd.read_csv(scored / "faithfulness.csv")  # the same run without --ci: the same values
    np.testing.assert_allclose(table["faithfulness"], plain["faithfulness"], atol=1e-9)


def test_nodes_draws_a_node_frontier_on_the_edge_curve(tiny_folder, tmp_path):
    # Seed 2: prompts on which the random model's clean run is above its corrupt one (the frontier checks).
    result = edge_run(tiny_folder, tmp_path, "--method", "eap", "--nodes", "--seed", "2")
    assert result.exit_code == 0, result.output
    frontier = ap.load(next(tmp_path.glob("*_nodes.nc")))
    assert list(frontier["size"].values) == [0, 1, 2, 3, 4]  # every size up to the 4 heads
    page = next(tmp_path.glob("*.html")).read_text()
    assert "nodes (Pareto frontier)" in page and "node circuit: x = its edges" in page


def test_nodes_is_refused_at_node_level(tiny_folder, tmp_path):
    result = run(
        "circuit", "--model", tiny_folder, "--task", "ioi", "--nodes", "--out", str(tmp_path)
    )
    assert result.exit_code == 2 and "--nodes applies to edge circuits" in result.output
