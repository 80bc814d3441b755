"""EAP-IG 2.0 on TransformerLens 3.9 for edges_vs_eap_ig.py, run with benchmarks/.venv-tl/bin/python.

EAP-IG is not a package on PyPI: the user passes the folder of their own checkout of
github.com/hannamw/EAP-IG (`--eap-ig-src`, the folder holding `src/eap`), and its `src/` goes on
sys.path here; nothing of it is copied, built or installed. This worker imports neither actpatch
nor the main environment: it reads the checkpoint folder, the token ids and the paths of the
circuit files in a JSON spec and writes a JSON with the scores, the curves and the timings.

What it times (wall time of each step, peak memory of the whole; one `measured` block, after loading the model and one warm-up forward), EAP-IG's
own pipeline on its own scores:
  attribute(method="EAP"), attribute(method="EAP-IG-inputs", ig_steps=steps),
  evaluate_baseline (clean and corrupt), then apply_topn + evaluate_graph at each size.
Untimed afterwards: our circuits (written by actpatch's save_graph), read with Graph.from_json and
evaluated with evaluate_graph, so both tools' evaluations of the *same* circuits can be compared;
and each attribution's work, counted again under torch's FLOP counter (as the actpatch side does).

Two things are adapted at run time, without touching EAP-IG's files:
  - its attribution functions allocate their score matrix with `torch.zeros(..., device='cuda')`;
    on a machine without CUDA the `torch` those modules see is a thin proxy whose `zeros` puts a
    'cuda' tensor on the model's device instead (everything else is torch itself);
  - its `tokenize_plus` prepends a BOS token to every prompt string; the prompts actpatch made have
    none (SmolLM2's tokenizer adds none), so `tokenize_plus` is replaced by a lookup that returns the
    spec's exact token ids for each prompt string: both tools run the very same tokens.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import torch

from _measure import measured, write_json
from _transformerlens_worker import load


class _TorchOnDevice(types.ModuleType):
    """`torch`, except that zeros(..., device='cuda') lands on `device` when CUDA is absent."""

    def __init__(self, device: str) -> None:
        super().__init__("torch")
        self._device = device

    def __getattr__(self, name: str):
        return getattr(torch, name)

    def zeros(self, *args, device=None, **kwargs):
        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            device = self._device
        return torch.zeros(*args, device=device, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--eap-ig-src", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    spec = json.loads(Path(args.spec).read_text())
    src = Path(args.eap_ig_src).resolve() / "src"
    if not (src / "eap" / "attribute.py").exists():
        raise SystemExit(f"{src / 'eap'} has no attribute.py: pass the folder of an EAP-IG checkout (the one holding src/eap)")
    sys.path.insert(0, str(src))
    try:
        import eap.attribute as eap_attribute
        import eap.evaluate as eap_evaluate
        from eap.graph import Graph
    except ModuleNotFoundError as error:
        raise SystemExit(f"EAP-IG needs {error.name!r} in this environment: "
                         f"{sys.executable} -m pip install {error.name}") from None

    clean, corrupt = torch.tensor(spec["clean"]), torch.tensor(spec["corrupt"])
    labels = torch.tensor([spec["answers"], spec["wrong"]]).T  # (prompt, [answer, wrong])
    model, hf_gap = load(spec["checkpoint"], corrupt)
    # What EAP-IG's attribute() asserts: per-head results, separate q/k/v inputs, hook_mlp_in, ungrouped GQA.
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    if model.cfg.n_key_value_heads is not None:
        model.set_ungroup_grouped_query_attention(True)
    device = str(model.cfg.device)
    for module in (eap_attribute, eap_evaluate):
        module.torch = _TorchOnDevice(device)

    ids = {text: row for text, row in zip(spec["clean_text"] + spec["corrupt_text"], spec["clean"] + spec["corrupt"])}

    def tokenize_plus(_model, inputs, max_length=None):
        tokens = torch.tensor([ids[text] for text in inputs], device=device)  # KeyError: not a spec prompt
        mask = torch.ones_like(tokens)  # every prompt has the same length: no padding
        return tokens, mask, mask.sum(1), tokens.shape[1]

    for module in (eap_attribute, eap_evaluate):
        module.tokenize_plus = tokenize_plus
    batch = [(list(spec["clean_text"]), list(spec["corrupt_text"]), labels)]  # one batch of all prompts

    def logit_diffs(logits, _clean_logits, input_lengths, label):
        last = logits[torch.arange(len(label)), input_lengths - 1]
        return last.gather(1, label[:, :1]).squeeze(1) - last.gather(1, label[:, 1:]).squeeze(1)

    def attribution_metric(logits, clean_logits, input_lengths, label):
        # Summed over prompts: attribute() divides by the number of prompts, so a score is a mean
        # over prompts. Negated: EAP-IG's score is (corrupt − clean)·∇metric, and ours is
        # (clean − corrupt)·∇(logit difference), so both say "positive = helps the clean answer".
        return -logit_diffs(logits, clean_logits, input_lengths, label).sum()

    # The graph's edges and sizes, to compare with ours by name.
    graph = Graph.from_model(model)
    names = list(graph.edges)
    index = torch.tensor([graph.edges[name].matrix_index for name in names])
    with torch.no_grad():
        _, cache = model.run_with_cache(clean[:1], names_filter=lambda n: n.endswith(("hook_q_input", "hook_k_input", "hook_v_input")))
    qkv_heads = {kind: int(cache[f"blocks.0.hook_{kind}_input"].shape[2]) for kind in "qkv"}
    del cache

    model(corrupt)  # warm-up, as every tool gets
    record: dict = {"tool": "eap-ig", "tl_vs_hf_max_abs_logit_diff": hf_gap, "n_edges": len(names),
                    "qkv_input_heads": qkv_heads, "n_heads": model.cfg.n_heads,
                    "n_key_value_heads": model.cfg.n_key_value_heads, "steps": spec["steps"],
                    "versions": {"transformer_lens": _version("transformer-lens"), "torch": torch.__version__,
                                 "eap": _version("eap", src)}}
    percents, total = spec["percents"], int(graph.real_edge_mask.sum())
    sizes = [int(p / 100 * total) for p in percents]
    timings: dict = {}
    with measured(record):
        scores = {}
        for method, label in (("EAP", "eap"), ("EAP-IG-inputs", "eap-ig-inputs")):
            start = time.perf_counter()
            eap_attribute.attribute(model, graph, batch, attribution_metric, method=method,
                                    ig_steps=spec["steps"] if method != "EAP" else None, quiet=True)
            timings[label] = time.perf_counter() - start
            scores[label] = graph.scores[index[:, 0], index[:, 1]].clone()
        start = time.perf_counter()
        clean_m, corrupt_m = _baselines(eap_evaluate, model, batch, logit_diffs)
        graph.scores[index[:, 0], index[:, 1]] = scores[spec["curve_method"]]
        own, own_circuits = [], []
        for n in sizes:
            graph.apply_topn(n, absolute=True)
            m = float(eap_evaluate.evaluate_graph(model, graph, batch, logit_diffs, quiet=True).mean())
            own.append({"n": n, "n_edges": int(graph.count_included_edges()), "logit_diff": m})
            own_circuits.append(graph.in_graph.clone())  # as evaluated (evaluate_graph prunes first)
        timings["curve"] = time.perf_counter() - start
    # Not timed: the same circuits as ours, from our files.
    # An imported circuit identical (after EAP-IG's prune) to EAP-IG's own circuit of that size is
    # not evaluated twice: evaluate_graph is deterministic, so its value is reused (and marked).
    imported = []
    for i, path in enumerate(spec["circuit_files"]):
        circuit = Graph.from_json(path)
        before = int(circuit.count_included_edges())
        circuit.prune()
        same = i < len(own_circuits) and torch.equal(circuit.in_graph, own_circuits[i])
        if same:
            m = own[i]["logit_diff"]
        else:
            m = float(eap_evaluate.evaluate_graph(model, circuit, batch, logit_diffs, quiet=True).mean())
        imported.append({"file": path, "n_edges_in_file": before, "n_edges_after_prune": int(circuit.count_included_edges()),
                         "logit_diff": m, "same_as_own_circuit": bool(same)})
    # Not timed either: the work of each attribution, counted as the actpatch side counts it.
    record["flops"] = _counted_work(model, clean, lambda method: eap_attribute.attribute(
        model, graph, batch, attribution_metric, method=method, ig_steps=spec["steps"] if method != "EAP" else None, quiet=True))
    record.update(timings=timings, edge_names=names, scores={k: v.tolist() for k, v in scores.items()},
                  clean_logit_diff=clean_m, corrupt_logit_diff=corrupt_m, own_curve=own, imported_curve=imported,
                  sizes=sizes)
    write_json(args.out, record)


def _counted_work(model, clean, attribute) -> dict:
    """Floating-point operations of every matrix product (torch.utils.flop_counter, forward and
    backward) of one TransformerLens forward of the clean prompts (which computes the logits at
    every position) and of each attribution: the same counter the actpatch side uses."""
    from torch.utils.flop_counter import FlopCounterMode

    def count(step) -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            step()
        return counter.get_total_flops()

    with torch.no_grad():
        found = {"forward_tl": count(lambda: model(clean))}
    for method, label in (("EAP", "eap"), ("EAP-IG-inputs", "eap-ig-inputs")):
        found[label] = count(lambda: attribute(method))
    return found


def _baselines(eap_evaluate, model, batch, metric) -> tuple[float, float]:
    """Mean logit difference of the clean and of the corrupt run (EAP-IG's evaluate_baseline)."""
    clean = float(eap_evaluate.evaluate_baseline(model, batch, metric, quiet=True).mean())
    corrupt = float(eap_evaluate.evaluate_baseline(model, batch, metric, run_corrupted=True, quiet=True).mean())
    return clean, corrupt


def _version(package: str, src: Path | None = None) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        if src is not None and (src.parent / "pyproject.toml").exists():
            for line in (src.parent / "pyproject.toml").read_text().splitlines():
                if line.startswith("version"):
                    return line.split("=", 1)[1].strip().strip('"') + " (source checkout)"
        return None


if __name__ == "__main__":
    main()
