"""Edge circuits, actpatch against EAP-IG 2.0 on TransformerLens 3.9, on the same IOI prompts.

On SmolLM2-135M-Instruct (float32, CPU) and `ap.ioi_pairs(model, n)` (16 prompts by default), in
one run, each tool in a fresh worker process:
  - actpatch: one `graph.EdgeRuns.prepare` (baseline, every sender's clean and corrupt outputs)
    shared by `graph.edge_scores` by "eap" and "eap-ig-inputs" (`--steps`, 5) and by
    `graph.faithfulness_curve` of the eap-ig-inputs scores at MIB's sizes;
  - EAP-IG (`_eap_ig_worker.py`, in benchmarks/.venv-tl): `attribute(method="EAP")`,
    `attribute(method="EAP-IG-inputs", ig_steps=5)`, then its own curve (`apply_topn` +
    `evaluate_graph` at the same sizes, on its own scores).
Reported: the Spearman rank correlation of our scores with theirs over every edge (matched by
name, after checking both graphs have the same edges), the faithfulness of the *same* circuits
(ours, chosen by our scores, written with `save_graph`, read by EAP-IG's `Graph.from_json` and
evaluated by its `evaluate_graph`) beside ours by `faithfulness_curve`, CPR and CMD of each, and
each side's wall time and peak memory (scores + curve).

EAP-IG is not on PyPI: pass your own checkout of github.com/hannamw/EAP-IG (the folder that holds
`src/eap`); its `src/` is put on the worker's sys.path, nothing is built or installed.

    bash benchmarks/setup_peers.sh       # once: TransformerLens 3.9 in benchmarks/.venv-tl
    python benchmarks/edges_vs_eap_ig.py --eap-ig-src PATH/TO/EAP-IG [--prompts 16]
Raw numbers and the circuit files go to benchmarks/results/edges_vs_eap_ig/."""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "edges_vs_eap_ig"
TL_PYTHON = HERE / ".venv-tl" / "bin" / "python"
METHODS = ("eap", "eap-ig-inputs")
CURVE_METHOD = "eap-ig-inputs"
TARGETS = {"spearman_eap": 0.999, "faithfulness_gap": 0.01, "speedup": 2.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eap-ig-src", help="folder of an EAP-IG checkout (the one holding src/eap)")
    parser.add_argument("--prompts", type=int, default=16, help="IOI prompts (ap.ioi_pairs(model, n))")
    parser.add_argument("--steps", type=int, default=5, help="integrated-gradient steps of eap-ig-inputs")
    parser.add_argument("--report", action="store_true", help="print the tables of the last run again (from its results)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_ours(args)
    if args.report:
        spec = json.loads((RESULTS / "spec.json").read_text())
        records = {tool: json.loads((RESULTS / f"{tool}.json").read_text()) for tool in ("actpatch", "eap-ig")}
        summary = json.loads((RESULTS / "summary.json").read_text())
        for tool, record in records.items():  # what the driver added to each worker's record
            record.update({k: summary["timing"][tool][k] for k in ("others_cores_during", "load_avg_1min_before")})
        fresh = compare(spec, records["actpatch"], records["eap-ig"])
        fresh["environment"] = summary["environment"]
        (RESULTS / "summary.json").write_text(json.dumps(fresh, indent=1))
        return print_report(fresh)
    if not args.eap_ig_src:
        parser.error("--eap-ig-src PATH is required: a checkout of github.com/hannamw/EAP-IG (the folder holding src/eap)")
    source = Path(args.eap_ig_src).resolve()
    if not (source / "src" / "eap" / "attribute.py").exists():
        parser.error(f"{source} has no src/eap/attribute.py: pass the folder of an EAP-IG checkout")
    if not TL_PYTHON.exists():
        raise SystemExit(f"{TL_PYTHON} is missing: run `bash benchmarks/setup_peers.sh` first (TransformerLens 3.9 lives there)")
    from sweep_peers import _run

    (RESULTS / "logs").mkdir(parents=True, exist_ok=True)
    spec = make_spec(args.prompts, args.steps)
    spec_path = RESULTS / "spec.json"
    spec_path.write_text(json.dumps(spec))
    print(f"SmolLM2-135M-Instruct from {spec['checkpoint']}; {args.prompts} IOI prompts × {len(spec['clean'][0])} tokens; "
          f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at the start\n", flush=True)
    records = {}
    for tool, command in (
        ("actpatch", [sys.executable, str(Path(__file__).resolve()), "--worker"]),
        ("eap-ig", [str(TL_PYTHON), str(HERE / "_eap_ig_worker.py"), "--eap-ig-src", str(source)]),
    ):
        out = RESULTS / f"{tool}.json"
        print(f"{tool} ...", end=" ", flush=True)
        load_before = os.getloadavg()[0]
        record = _run(command + ["--spec", str(spec_path), "--out", str(out)], out, RESULTS / "logs" / f"{tool}.log")
        record["load_avg_1min_before"] = load_before
        print(f"{record['wall_s']:.1f} s (other processes used {record['others_cores_during']:.2f} cores meanwhile)", flush=True)
        records[tool] = record
    summary = compare(spec, records["actpatch"], records["eap-ig"])
    summary["environment"] = environment()
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=1))
    print_report(summary)
    print(f"raw results: {RESULTS.relative_to(HERE.parent)}/")


def make_spec(n: int, steps: int) -> dict:
    """The prompts both tools run (token ids and their strings), the sizes and the circuit files."""
    import actpatch as ap
    from actpatch import graph

    model = ap.load_model()
    pairs = ap.ioi_pairs(model, n=n)
    if not pairs.clean_text or not pairs.corrupt_text or len(set(pairs.clean_text) | set(pairs.corrupt_text)) != 2 * n:
        raise SystemExit("EAP-IG's worker finds each prompt's token ids by its string: the prompts must be distinct strings")
    return {
        "checkpoint": model.provenance["checkpoint"],
        "model_source": model.provenance,
        "clean": pairs.clean.tolist(),
        "corrupt": pairs.corrupt.tolist(),
        "answers": pairs.answers.tolist(),
        "wrong": pairs.wrong.tolist(),
        "positions": {name: where.tolist() for name, where in pairs.positions.items()},
        "clean_text": list(pairs.clean_text),
        "corrupt_text": list(pairs.corrupt_text),
        "steps": steps,
        "percents": list(graph.MIB_PERCENTS),
        "curve_method": CURVE_METHOD,
        "circuit_files": [str(RESULTS / f"circuit_{p:g}pct.json") for p in graph.MIB_PERCENTS],
    }


# ---- actpatch's worker (a fresh process) ----------------------------------------------------------


def run_ours(args: argparse.Namespace) -> None:
    import torch

    import actpatch as ap
    from actpatch import graph
    from _measure import measured, write_json

    torch.set_grad_enabled(False)
    spec = json.loads(Path(args.spec).read_text())
    model = ap.load_model(spec["checkpoint"])
    pairs = ap.PromptPairs(clean=torch.tensor(spec["clean"]), corrupt=torch.tensor(spec["corrupt"]),
                           answers=torch.tensor(spec["answers"]), wrong=torch.tensor(spec["wrong"]),
                           clean_text=tuple(spec["clean_text"]), corrupt_text=tuple(spec["corrupt_text"]),
                           positions={name: torch.tensor(where) for name, where in spec["positions"].items()})
    model.hf(input_ids=pairs.corrupt)  # warm-up, as every tool gets
    record: dict = {"tool": "actpatch", "versions": {"actpatch": _version("actpatch"), "torch": torch.__version__}}
    timings, scores = {}, {}
    with measured(record):
        start = time.perf_counter()  # the baseline and every sender's outputs, once for the scores and the curve
        runs = graph.EdgeRuns.prepare(model, pairs)
        timings["prepare"] = time.perf_counter() - start
        for method in METHODS:
            start = time.perf_counter()
            scores[method] = graph.edge_scores(model, pairs, method, steps=spec["steps"], progress=False, runs=runs)
            timings[method] = time.perf_counter() - start
        start = time.perf_counter()
        curve = graph.faithfulness_curve(model, pairs, scores[spec["curve_method"]], runs=runs)
        timings["curve"] = time.perf_counter() - start
    # Not timed: each step's work under torch's FLOP counter, in the unit edges_cost.py uses (one
    # plain forward of the clean prompts, final-position logits), each score method also alone.
    record["flops"] = _counted_work(model, pairs, spec["steps"], scores[spec["curve_method"]])
    # Not timed: the curve's circuits as EAP-IG / MIB files, for EAP-IG to evaluate.
    chosen = scores[spec["curve_method"]]
    for percent, path in zip(spec["percents"], spec["circuit_files"]):
        graph.save_graph(path, chosen, graph.top_edges(chosen, percent=percent))
    g = chosen.graph
    edges = g.exists.nonzero()
    record.update(
        timings=timings, edge_names=g.edge_names(),
        scores={m: s.scores[edges[:, 0], edges[:, 1]].tolist() for m, s in scores.items()},
        faithfulness=curve.sel(metric="faithfulness").values.tolist(),
        logit_diff=curve.sel(metric="logit_diff").values.tolist(),
        n_edges=curve.n_edges.values.tolist(), cpr=curve.attrs["cpr"], cmd=curve.attrs["cmd"],
        empty_logit_diff=curve.attrs["empty_logit_diff"], full_logit_diff=curve.attrs["full_logit_diff"],
        graph_cfg=g.cfg, n_edges_total=g.n_edges,
    )
    write_json(args.out, record)


def _counted_work(model, pairs, steps: int, curve_scores) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from actpatch import graph

    def count(step) -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            step()
        return counter.get_total_flops()

    tokens = pairs.clean.to(model.device)
    with torch.no_grad():
        found = {"forward": count(lambda: model.hf(input_ids=tokens, use_cache=False, logits_to_keep=1))}
    runs = graph.EdgeRuns.prepare(model, pairs)
    found["prepare"] = count(lambda: graph.EdgeRuns.prepare(model, pairs))
    for method in METHODS:
        found[method] = count(lambda: graph.edge_scores(model, pairs, method, steps=steps, progress=False, runs=runs))
        found[f"{method} alone"] = count(lambda: graph.edge_scores(model, pairs, method, steps=steps, progress=False))
    found["curve"] = count(lambda: graph.faithfulness_curve(model, pairs, curve_scores, runs=runs))
    return found


# ---- the comparison ---------------------------------------------------------------------------------


def compare(spec: dict, ours: dict, theirs: dict) -> dict:
    import numpy as np
    from scipy.stats import spearmanr

    from actpatch.graph import cpr_cmd

    same_names = set(ours["edge_names"]) == set(theirs["edge_names"])  # EAP-IG lists them in another order
    position = {name: i for i, name in enumerate(theirs["edge_names"])}
    missing = [n for n in ours["edge_names"] if n not in position]
    extra = sorted(set(theirs["edge_names"]) - set(ours["edge_names"]))
    shared = [n for n in ours["edge_names"] if n in position]
    mine = [i for i, n in enumerate(ours["edge_names"]) if n in position]
    other = [position[n] for n in shared]
    graphs = {"same_edge_names": same_names, "n_edges_ours": len(ours["edge_names"]),
              "n_edges_eap_ig": len(theirs["edge_names"]), "missing_in_eap_ig": missing[:10], "extra_in_eap_ig": extra[:10],
              "qkv_input_heads_eap_ig": theirs["qkv_input_heads"], "n_heads": theirs["n_heads"],
              "n_key_value_heads": theirs["n_key_value_heads"]}
    scores = {}
    for method in METHODS:
        a = np.asarray(ours["scores"][method])[mine]
        b = np.asarray(theirs["scores"][method])[other]
        top = max(1, len(a) // 100)
        top_a, top_b = set(np.argsort(-np.abs(a))[:top]), set(np.argsort(-np.abs(b))[:top])
        scores[method] = {"spearman": float(spearmanr(a, b).statistic), "pearson": float(np.corrcoef(a, b)[0, 1]),
                          "max_abs_diff": float(np.abs(a - b).max()), "max_abs_score": float(np.abs(a).max()),
                          "top1pct_overlap": len(top_a & top_b) / top}
    clean, corrupt = theirs["clean_logit_diff"], theirs["corrupt_logit_diff"]
    f_theirs_ours = [(c["logit_diff"] - corrupt) / (clean - corrupt) for c in theirs["imported_curve"]]
    f_theirs_own = [(c["logit_diff"] - corrupt) / (clean - corrupt) for c in theirs["own_curve"]]
    percents = spec["percents"]
    curve = {"percents": percents, "n_edges_ours": ours["n_edges"],
             "n_edges_eap_ig_after_import": [c["n_edges_after_prune"] for c in theirs["imported_curve"]],
             "n_edges_eap_ig_own": [c["n_edges"] for c in theirs["own_curve"]],
             "identical_to_eap_ig_own": [c.get("same_as_own_circuit") for c in theirs["imported_curve"]],
             "f_ours": ours["faithfulness"], "f_eap_ig_same_circuits": f_theirs_ours, "f_eap_ig_own_circuits": f_theirs_own,
             "max_abs_gap_same_circuits": float(np.abs(np.subtract(ours["faithfulness"], f_theirs_ours)).max()),
             "cpr_cmd_ours": [ours["cpr"], ours["cmd"]], "cpr_cmd_eap_ig_same_circuits": list(cpr_cmd(percents, f_theirs_ours)),
             "cpr_cmd_eap_ig_own_circuits": list(cpr_cmd(percents, f_theirs_own)),
             "baselines": {"ours_full_empty": [ours["full_logit_diff"], ours["empty_logit_diff"]],
                           "eap_ig_clean_corrupt": [clean, corrupt]}}
    timing = {tool: {"steps_s": rec["timings"], "wall_s": rec["wall_s"], "rss_before_mib": rec["rss_before_mib"],
                     "peak_delta_mib": rec["peak_delta_mib"], "others_cores_during": rec["others_cores_during"],
                     "load_avg_1min_before": rec["load_avg_1min_before"], "versions": rec["versions"]}
              for tool, rec in (("actpatch", ours), ("eap-ig", theirs))}
    timing["speedup"] = theirs["wall_s"] / ours["wall_s"]
    if "flops" in ours and "flops" in theirs:  # forward-equivalents: one plain HF forward, final-position logits
        unit = ours["flops"]["forward"]
        timing["forward_equivalents"] = {
            "actpatch": {k: v / unit for k, v in ours["flops"].items() if k != "forward"},
            "eap-ig": {k: v / unit for k, v in theirs["flops"].items()}}
    return {"n_prompts": len(spec["clean"]), "seq_len": len(spec["clean"][0]), "steps": spec["steps"],
            "graphs": graphs, "scores": scores, "curve": curve, "timing": timing,
            "tl_vs_hf_max_abs_logit_diff": theirs["tl_vs_hf_max_abs_logit_diff"], "targets": TARGETS}


def print_report(s: dict) -> None:
    g, c, t = s["graphs"], s["curve"], s["timing"]
    ok = lambda good: "✓" if good else "✗"  # noqa: E731
    print(f"\n### Edge circuits on SmolLM2-135M-Instruct IOI ({s['n_prompts']} prompts × {s['seq_len']} tokens), "
          f"actpatch vs EAP-IG 2.0 on TransformerLens 3.9\n")
    print(f"Graphs: {g['n_edges_ours']} edges here, {g['n_edges_eap_ig']} in EAP-IG's; the same names: "
          f"{'yes' if g['same_edge_names'] else 'NO'}; EAP-IG's q/k/v inputs have {g['qkv_input_heads_eap_ig']} heads "
          f"({g['n_heads']} query heads, {g['n_key_value_heads']} KV heads, ungrouped)."
          + (f" Missing there: {g['missing_in_eap_ig']}; extra there: {g['extra_in_eap_ig']}" if g["missing_in_eap_ig"] or g["extra_in_eap_ig"] else ""))
    print("\n| scores | Spearman (ours vs EAP-IG) | Pearson | max abs diff | max abs score | top-1% overlap |")
    print("|---|---:|---:|---:|---:|---:|")
    for method, row in s["scores"].items():
        label = "EAP" if method == "eap" else f"EAP-IG-inputs ({s['steps']} steps)"
        target = f" {ok(row['spearman'] >= TARGETS['spearman_eap'])}" if method == "eap" else ""
        print(f"| {label} | {row['spearman']:.6f}{target} | {row['pearson']:.6f} | {row['max_abs_diff']:.2e} "
              f"| {row['max_abs_score']:.3f} | {row['top1pct_overlap']:.3f} |")
    print(f"\nFaithfulness of our top-n circuits by {CURVE_METHOD} scores (f = (m(C) − m(∅)) / (m(full) − m(∅)), "
          "mean logit difference); EAP-IG's own circuits are its apply_topn of its own scores:\n")
    print("| % edges | edges (ours, pruned) | edges in EAP-IG after import + prune | f ours | f EAP-IG, same circuit | Δf (abs) | "
          "f EAP-IG, own circuit (edges) | own circuit = ours |")
    print("|---:|---:|---:|---:|---:|---:|---:|:-:|")
    for i, p in enumerate(c["percents"]):
        gap = abs(c["f_ours"][i] - c["f_eap_ig_same_circuits"][i])
        print(f"| {p:g} | {c['n_edges_ours'][i]} | {c['n_edges_eap_ig_after_import'][i]} | {c['f_ours'][i]:.4f} "
              f"| {c['f_eap_ig_same_circuits'][i]:.4f} | {gap:.1e} {ok(gap <= TARGETS['faithfulness_gap'])} "
              f"| {c['f_eap_ig_own_circuits'][i]:.4f} ({c['n_edges_eap_ig_own'][i]}) "
              f"| {_yes_no(c['identical_to_eap_ig_own'][i])} |")
    if any(c["identical_to_eap_ig_own"]):
        print("\n(Where EAP-IG's own circuit is the same edge set as ours after its prune, the worker reuses "
              "its evaluate_graph value instead of evaluating the same circuit twice.)")
    (cpr_o, cmd_o), (cpr_s, cmd_s), (cpr_e, cmd_e) = c["cpr_cmd_ours"], c["cpr_cmd_eap_ig_same_circuits"], c["cpr_cmd_eap_ig_own_circuits"]
    print(f"\nCPR / CMD: ours {cpr_o:.4f} / {cmd_o:.4f}; EAP-IG on the same circuits {cpr_s:.4f} / {cmd_s:.4f}; "
          f"EAP-IG on its own circuits {cpr_e:.4f} / {cmd_e:.4f}")
    (full, empty), (clean, corrupt) = c["baselines"]["ours_full_empty"], c["baselines"]["eap_ig_clean_corrupt"]
    print(f"Baselines (mean logit difference): ours full {full:.5f} / empty {empty:.5f}; EAP-IG clean {clean:.5f} / corrupt {corrupt:.5f}; "
          f"TransformerLens vs HF logits: max abs diff {s['tl_vs_hf_max_abs_logit_diff']:.1e}")
    print("\n| side | shared runs s | EAP s | EAP-IG-inputs s | curve s | total s (scores + curve) | × ours | RSS before MiB "
          "| peak Δ RSS MiB | other load (cores) | load avg before |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for tool, label in (("actpatch", "actpatch"), ("eap-ig", "EAP-IG 2.0 + TransformerLens 3.9")):
        r = t[tool]
        ratio = r["wall_s"] / t["actpatch"]["wall_s"]
        prepare = r["steps_s"].get("prepare")
        print(f"| {label} | {'—' if prepare is None else f'{prepare:.1f}'} | {r['steps_s']['eap']:.1f} | {r['steps_s']['eap-ig-inputs']:.1f} | {r['steps_s']['curve']:.1f} "
              f"| {r['wall_s']:.1f} | {ratio:.2f} | {r['rss_before_mib']:.0f} | {r['peak_delta_mib']:.0f} "
              f"| {r['others_cores_during']:.2f} | {r['load_avg_1min_before']:.2f} |")
    fe = t.get("forward_equivalents")
    if fe:
        ours, theirs = fe["actpatch"], fe["eap-ig"]
        print("\nWork in forward-equivalents (FLOPs of every matrix product, forward and backward, under torch's FLOP "
              "counter, ÷ one plain HF forward of the clean prompts with final-position logits; not timed):\n")
        print("| side | EAP | EAP-IG-inputs | one forward of the tool's model |")
        print("|---|---:|---:|---:|")
        print(f"| actpatch, alone | {ours['eap alone']:.2f} | {ours['eap-ig-inputs alone']:.2f} | 1.00 |")
        print(f"| actpatch, given the shared runs ({ours['prepare']:.2f}) | {ours['eap']:.2f} | {ours['eap-ig-inputs']:.2f} | |")
        print(f"| EAP-IG 2.0 + TransformerLens 3.9 | {theirs['eap']:.2f} | {theirs['eap-ig-inputs']:.2f} | {theirs['forward_tl']:.2f} |")
        print(f"\nactpatch's curve ({len(c['percents'])} sizes, given the shared runs): {ours['curve']:.2f} forward-equivalents.")
    print(f"\nSpeed-up, EAP-IG's total / ours: {t['speedup']:.2f}× {ok(t['speedup'] >= TARGETS['speedup'])} (target ≥ {TARGETS['speedup']:g}×)\n")


def _yes_no(value) -> str:
    return "?" if value is None else ("yes" if value else "no")


def environment() -> dict:
    return {"python": platform.python_version(), "cores": os.cpu_count(), "machine": platform.machine(),
            "processor": platform.processor(), "versions": {p: _version(p) for p in ("actpatch", "torch", "transformers", "scipy")}}


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
