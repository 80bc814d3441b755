"""One IOI task, several corruptions: what each corruption shows, what it hides, and which of those
differences are more than the prompts' noise (SmolLM2).

The same denoising sweeps run under three corruptions of the same clean prompts:
  abc        S1, IO and S2 each replaced by an unrelated name: everything name-related;
  s2         only the repeated subject S2 replaced: the duplicate-token path;
  io_s_swap  subject and indirect object exchanged: the same names in swapped roles.
A component can matter under one and be invisible under another, because the corruption decides
which information differs between the runs (Heimersheim & Nanda 2024, section 3.1). The script
prints, for the residual stream at each named position and for each head at the final position,
the effects that differ most between corruptions, each with its 95 % bootstrap interval over
prompts, and which of those differences survive a paired comparison of two corruptions on the
same clean prompts with a false-discovery control (`actpatch.stats.compare`, docs/uncertainty.md).

    python examples/ioi_sensitivity.py                # about 5 minutes on 2 idle CPU cores
    python examples/ioi_sensitivity.py --prompts 32 --threshold 0.3 --layers 0-29:3
"""
from __future__ import annotations

import argparse
import itertools

import pandas as pd

import actpatch as ap
from actpatch import report, stats

CORRUPTIONS = ("abc", "s2", "io_s_swap")
POSITIONS = ["S1", "IO", "S2", "END"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16, help="IOI prompt pairs per corruption (same clean prompts)")
    parser.add_argument("--threshold", type=float, default=0.5, help="smallest difference between corruptions to list")
    parser.add_argument("--layers", default=None, help="layers to sweep as START-STOP:STEP, e.g. 0-29:2 (default all)")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for intervals and comparisons")
    parser.add_argument("--html", default="ioi_sensitivity.html", help="where to write the report")
    args = parser.parse_args()
    pd.set_option("display.width", 160, "display.max_columns", 14)

    model = ap.load_model()
    layers = _layers(args.layers)
    pairs = same_clean_prompts(model, args.prompts, seed=0)
    example = pairs["abc"]
    print(f"clean: {example.clean_text[0]!r} -> {model.token_strings(example.answers[:1])[0]!r}")
    for name, p in pairs.items():
        print(f"  {name:>9}: {p.corrupt_text[0]!r}")
    options = dict(per_prompt=True, layers=layers)

    residual_rows = ap.sweep_corruptions(model, pairs, "resid_pre", positions=POSITIONS, **options)
    residual = stats.intervals(residual_rows, ci=ap.Bootstrap(n_boot=args.n_boot))
    print("\nresid_pre, denoising one named position: normalised logit difference [95 % interval]; rows: layer")
    print(interval_table(residual).to_string())
    differences(residual_rows, residual, args.threshold, args.n_boot, "residual-stream sites")

    head_rows = ap.sweep_corruptions(model, pairs, "head", positions=["END"], **options)
    heads = stats.intervals(head_rows, ci=ap.Bootstrap(n_boot=args.n_boot))
    differences(head_rows, heads, args.threshold / 2, args.n_boot, "heads at END")

    page = report.render_report({"resid_pre by corruption": residual, "heads at END by corruption": heads}, args.html)
    print(f"\nreport: {page}")


def same_clean_prompts(model, n: int, *, seed: int) -> dict[str, ap.PromptPairs]:
    """The three corruptions of one set of clean prompts: `ap.tasks.ioi` draws the clean prompts
    from (n, seed) alone, so a paired comparison pairs each prompt with itself."""
    built = {name: ap.tasks.ioi(model, n, corruption=name, seed=seed) for name in CORRUPTIONS}
    assert all(p.clean_text == built["abc"].clean_text for p in built.values())
    return built


def interval_table(bounds) -> pd.DataFrame:
    """Layer rows, (corruption, position) columns, each cell `value [lo, hi]`."""
    cells = bounds.sel(metric="norm_logit_diff")
    frame = cells.to_dataframe(name="v")["v"].unstack("stat")
    text = frame.apply(lambda r: f"{r['value']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}]", axis=1)
    return text.unstack(["corruption", "pos"])


def differences(rows, bounds, threshold: float, n_boot: int, what: str) -> None:
    """The sites whose effect differs by ≥ threshold between corruptions, and whether each pair's
    difference survives the paired bootstrap at a 5 % false discovery rate."""
    listed = ap.sensitivity_report(bounds.sel(stat="value"), threshold=threshold)
    print(f"\n{what} whose effect differs by ≥ {threshold} between corruptions (top 8 of {len(listed)}):")
    print(listed.head(8).round(2).to_string())
    tables = {}
    for a, b in itertools.combinations(CORRUPTIONS, 2):
        table = stats.compare(rows.sel(corruption=a), rows.sel(corruption=b), ci=ap.Bootstrap(n_boot=n_boot))
        tables[a, b] = table.set_index("site")
        print(f"  {a} − {b}: {int(table['flagged'].sum())} of {len(table)} sites differ (Benjamini–Hochberg, fdr 5 %)")
    print(f"  of the {len(listed)} listed differences (largest − smallest corruption), paired test of that pair:")
    survived = 0
    for site, row in listed.iterrows():
        a, b = row["largest_under"], row["smallest_under"]
        key = (a, b) if (a, b) in tables else (b, a)
        found = tables[key].loc[site]
        survived += bool(found["flagged"])
        if len(listed) <= 12 or site in listed.index[:8]:
            print(f"    {site}: {key[0]} − {key[1]} = {found['difference']:+.2f} [{found['lo']:+.2f}, {found['hi']:+.2f}], "
                  f"p = {found['p']:.3g}: {'survives' if found['flagged'] else 'not distinguishable from chance'}")
    print(f"  {survived} of {len(listed)} survive")
    print_hidden(listed, threshold)


def print_hidden(listed, threshold: float, invisible: float = 0.05) -> None:
    """Sites with a clear effect under one corruption and next to none under another."""
    names = listed.attrs["corruptions"]
    hidden = [(site, shown, gone, row[shown], row[gone]) for site, row in listed.iterrows()
              for shown in names for gone in names if abs(row[shown]) >= threshold and abs(row[gone]) < invisible]
    print(f"  visible (|effect| ≥ {threshold}) under one corruption, invisible (< {invisible}) under another: {len(hidden)}")
    for site, shown, gone, a, b in hidden[:6]:
        print(f"    {site}: {a:+.2f} under {shown}, {b:+.2f} under {gone}")


def _layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    span, _, step = text.partition(":")
    first, _, last = span.partition("-")
    return list(range(int(first), int(last or first) + 1, int(step or 1)))


if __name__ == "__main__":
    main()
