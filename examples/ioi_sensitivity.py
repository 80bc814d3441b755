"""One IOI task, several corruptions: what each corruption shows, and what it hides (SmolLM2).

The same denoising sweeps run under three corruptions of the same clean prompts:
  abc        S1, IO and S2 each replaced by an unrelated name: everything name-related;
  s2         only the repeated subject S2 replaced: the duplicate-token path;
  io_s_swap  subject and indirect object exchanged: the same names in swapped roles.
A component can matter under one and be invisible under another, because the corruption decides
which information differs between the runs (Heimersheim & Nanda 2024, section 3.1). The script
prints, for the residual stream at each named position and for each head at the final position,
the effects that differ most between corruptions.

    python examples/ioi_sensitivity.py                # about 5 minutes on 2 idle CPU cores
    python examples/ioi_sensitivity.py --prompts 32 --threshold 0.3
"""
from __future__ import annotations

import argparse

import pandas as pd

import actpatch as ap
from actpatch import report

CORRUPTIONS = ("abc", "s2", "io_s_swap")
POSITIONS = ["S1", "IO", "S2", "END"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16, help="IOI prompt pairs per corruption (same clean prompts)")
    parser.add_argument("--threshold", type=float, default=0.5, help="smallest difference between corruptions to list")
    parser.add_argument("--html", default="ioi_sensitivity.html", help="where to write the report")
    args = parser.parse_args()
    pd.set_option("display.width", 140, "display.max_columns", 12)

    model = ap.load_model()
    # One seed for all three: the clean prompts are identical, only the corrupt prompts differ.
    pairs = {c: ap.tasks.ioi(model, args.prompts, corruption=c, seed=0) for c in CORRUPTIONS}
    example = pairs["abc"]
    print(f"clean: {example.clean_text[0]!r} -> {model.token_strings(example.answers[:1])[0]!r}")
    for name, p in pairs.items():
        print(f"  {name:>9}: {p.corrupt_text[0]!r}")

    residual = ap.sweep_corruptions(model, pairs, "resid_pre", positions=POSITIONS)
    table = residual.sel(metric="norm_logit_diff").to_dataframe(name="effect")["effect"].unstack(["corruption", "pos"])
    print("\nresid_pre, denoising one named position (normalised logit difference; rows: layer)")
    print(table.iloc[::3].round(2).to_string())
    report_residual = ap.sensitivity_report(residual, threshold=args.threshold)
    print(f"\nresidual-stream sites whose effect differs by ≥ {args.threshold} between corruptions (top 8 of {len(report_residual)}):")
    print(report_residual.head(8).round(2).to_string())
    print_hidden(report_residual, args.threshold)

    heads = ap.sweep_corruptions(model, pairs, "head", positions=["END"])
    report_heads = ap.sensitivity_report(heads, threshold=args.threshold / 2)
    print(f"\nheads at END whose effect differs by ≥ {args.threshold / 2} between corruptions (top 8 of {len(report_heads)}):")
    print(report_heads.head(8).round(2).to_string())
    print_hidden(report_heads, args.threshold / 2)

    page = report.render_report({"resid_pre by corruption": residual, "heads at END by corruption": heads}, args.html)
    print(f"\nreport: {page}")


def print_hidden(report, threshold: float, invisible: float = 0.05) -> None:
    """Sites with a clear effect under one corruption and next to none under another."""
    names = report.attrs["corruptions"]
    hidden = [(site, shown, gone, row[shown], row[gone]) for site, row in report.iterrows()
              for shown in names for gone in names if abs(row[shown]) >= threshold and abs(row[gone]) < invisible]
    print(f"  visible (|effect| ≥ {threshold}) under one corruption, invisible (< {invisible}) under another: {len(hidden)}")
    for site, shown, gone, a, b in hidden[:6]:
        print(f"    {site}: {a:+.2f} under {shown}, {b:+.2f} under {gone}")


if __name__ == "__main__":
    main()
