"""An IOI circuit in SmolLM2-135M-Instruct: found from a head sweep, then questioned.

1-4 in one call, `ap.find_circuit` (as `actpatch circuit` runs them):
1. sweep every head (denoising, every position at once) and rank the heads by effect;
2. grow circuits of the top-k heads and measure each (the Pareto frontier; MLPs and embeddings
   run untouched, every head outside the circuit takes its corrupt-run value);
3. take the smallest circuit recovering 80% of the clean−corrupt logit difference;
4. remove each member alone (minimality: passengers cost nothing);
then 5. knock out each of the top heads and re-measure the heads after it (backup behaviour).
The frontier is saved as an HTML figure when plotly is installed.

    python examples/ioi_circuit.py                 # about 11 minutes on 2 busy CPU cores
    python examples/ioi_circuit.py --prompts 16 --max-size 60 --html frontier.html
"""
from __future__ import annotations

import argparse

import pandas as pd

import actpatch as ap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8, help="IOI prompt pairs (one template, ABBA, ABC corruption)")
    parser.add_argument("--max-size", type=int, default=40, help="largest circuit evaluated on the frontier")
    parser.add_argument("--recovery", type=float, default=0.8, help="share of the behaviour the chosen circuit must recover")
    parser.add_argument("--top", type=int, default=3, help="heads knocked out in the backup report")
    parser.add_argument("--html", default="ioi_frontier.html", help="where to save the frontier figure (needs plotly)")
    args = parser.parse_args()
    pd.set_option("display.width", 120)

    model = ap.load_model()
    pairs = ap.ioi_pairs(model, n=args.prompts)
    print(f"{len(pairs)} IOI prompts, e.g. {pairs.clean_text[0]!r} -> {model.token_strings(pairs.answers[:1])[0]!r}")

    found = ap.find_circuit(model, pairs, "head", recovery=args.recovery, max_size=args.max_size)
    print(found)
    sweep, frontier = found.ranked_by, found.frontier
    effects = sweep.sel(metric="norm_logit_diff")
    print("\nStrongest heads (denoising one head, normalised logit difference):")
    for head in ap.circuits.ranking(sweep)[:10]:
        print(f"  {head}  {effects.sel(layer=head.layer, head=head.head).item():+.3f}")

    curve = frontier.sel(metric="norm_logit_diff")
    print("\nPareto frontier: the top-k heads intact, every other head at its corrupt value:")
    print(pd.DataFrame({"added": curve["component"].values, "norm_logit_diff": curve.values.round(3)},
                       index=pd.Index(curve["size"].values, name="size")).to_string())
    for recovery in sorted({args.recovery, 0.9}):
        circuit = ap.smallest_circuit(frontier, recovery)
        reached = "not reached" if circuit is None else f"{len(circuit)} heads"
        print(f"smallest circuit recovering {recovery:.0%} (sizes up to {args.max_size}): {reached}")

    if found.circuit is None:
        print("no circuit reaches that recovery within --max-size; raise it to go on")
        return
    table = found.minimality
    print(f"\nMinimality of the {len(found.circuit)}-head circuit (it scores {table.attrs['circuit_score']:.3f}; "
          f"passenger: removing it costs < {table.attrs['threshold']}):")
    print(table.round(3).to_string())

    report = ap.backup_report(model, pairs, sweep, top=args.top)
    print(f"\nBackup: heads and MLPs whose total effect grows by >= {report.attrs['threshold']} when one of "
          f"{', '.join(report.attrs['ablated'])} is knocked out (corrupt value, clean run):")
    print(report.round(3).to_string(index=False) if len(report) else "  none")

    try:
        figure = ap.circuits.plot_frontier(frontier, recoveries=(args.recovery, 0.9))
    except ImportError as error:
        print(f"\n(no figure: {error})")
        return
    figure.write_html(args.html, include_plotlyjs=True)  # self-contained: opens offline
    print(f"\nfrontier figure written to {args.html}")


if __name__ == "__main__":
    main()
