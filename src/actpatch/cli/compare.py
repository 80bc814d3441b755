"""`actpatch compare`: two per-prompt results of the same prompts, site by site, with a false-discovery control."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

import actpatch as ap
from actpatch import atomic
from actpatch.cli.common import SHARE, fail, first_line

CLOSEST = 5  # sites shown when none is flagged


@click.command("compare")
@click.argument("a_path", metavar="A.nc", type=click.Path(path_type=Path))
@click.argument("b_path", metavar="B.nc", type=click.Path(path_type=Path))
@click.option("--metric", default="norm_logit_diff", help="The metric compared.")
@click.option(
    "--fdr",
    type=SHARE,
    default=0.05,
    help="False discovery rate of the flags (Benjamini–Hochberg over all sites).",
)
@click.option("--ci", type=SHARE, default=0.95, help="Coverage of each difference's interval.")
@click.option(
    "--n-boot",
    type=click.IntRange(min=1),
    help="Bootstrap resamples (default: actpatch.Bootstrap's, 1000).",
)
@click.option("--boot-seed", type=int, help="Seed of the bootstrap resamples (default 0).")
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the whole table (every site) as CSV.",
)
def compare(
    a_path: Path,
    b_path: Path,
    metric: str,
    fdr: float,
    ci: float,
    n_boot: int | None,
    boot_seed: int | None,
    out: Path | None,
) -> None:
    """Which sites differ between two sweeps of the same prompts, beyond the prompts' noise.

    \b
    actpatch sweep --task ioi --prompts 32 --site head --per-prompt --out base
    actpatch sweep --task ioi --prompts 32 --site head --per-prompt --model ./tuned --out tuned
    actpatch compare base/ioi_head_denoise.nc tuned/ioi_head_denoise.nc --out base_vs_tuned.csv

    Both results must be saved with --per-prompt, over the same sites, from the same clean prompts
    in the same order (two corruptions, two directions, two models). Each bootstrap resample draws
    one set of prompts for both (a paired bootstrap); a site is flagged when its difference A − B
    survives Benjamini–Hochberg at --fdr over all sites (docs/uncertainty.md). Prints the flagged
    sites with their difference, interval, raw and adjusted p; when none is flagged, the closest
    calls (the smallest raw p) instead."""
    from actpatch import stats
    from actpatch.metrics import METRICS
    from actpatch.stats.bootstrap import Bootstrap

    if metric not in METRICS:
        fail(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    results = {name: _load(path) for name, path in (("A", a_path), ("B", b_path))}
    for name, path in (("A", a_path), ("B", b_path)):
        if "batch" not in results[name].dims:
            fail(
                f"{path} is not a per-prompt result (no 'batch' dimension): sweep it again with --per-prompt"
            )
    _same_prompts(results["A"], results["B"], a_path, b_path)
    given = {"n_boot": n_boot, "seed": boot_seed}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            table = stats.compare(
                results["A"],
                results["B"],
                metric=metric,
                ci=Bootstrap(ci, **{k: v for k, v in given.items() if v is not None}),
                fdr=fdr,
            )
        except ValueError as error:  # different prompt counts, length groups or sites
            fail(f"cannot compare {a_path} with {b_path}: {first_line(error)}")
    for warning in caught:
        click.echo(f"warning: {first_line(str(warning.message))}", err=True)
    flagged = table[table["flagged"]]
    click.echo(
        f"{metric}: A = {a_path}, B = {b_path}; {table.attrs['n_prompts']} prompts, paired bootstrap of "
        f"{table.attrs['n_boot']} resamples, {100 * ci:g} % intervals"
    )
    click.echo(
        f"{len(flagged)} of {len(table)} sites differ at a false discovery rate of {fdr:g} (Benjamini–Hochberg)"
    )
    if len(flagged):
        shown = flagged.reindex(
            flagged["difference"].abs().sort_values(ascending=False, kind="stable").index
        )
        for _, row in shown.iterrows():
            click.echo(_site_line(table, row))
    else:  # nothing survives: the closest calls, so a near miss is not read as "no difference"
        closest = table.sort_values(
            ["p", "difference"], kind="stable", key=lambda c: c if c.name == "p" else -c.abs()
        )
        closest = closest[closest["p"] < 1].head(CLOSEST)
        if len(closest):
            click.echo(
                f"closest calls (smallest raw p; adjusted p would need to be ≤ {fdr:g} to flag):"
            )
            for _, row in closest.iterrows():
                click.echo(_site_line(table, row))
    if out is not None:
        path = atomic.write_text(out, table.to_csv(index=False))
        click.echo(f"table {path}")


def _site_line(table, row) -> str:
    """One site's difference, interval and p-values, indented under the summary line."""
    where = (
        row["site"]
        if "site" in row
        else ", ".join(f"{c}={row[c]}" for c in table.columns[: table.columns.get_loc("a")])
    )
    return (
        f"  {where}: A {row['a']:+.3f}, B {row['b']:+.3f}, A − B {row['difference']:+.3f} "
        f"[{row['lo']:+.3f}, {row['hi']:+.3f}], p = {row['p']:.3g} "
        f"(adjusted {row['p_adjusted']:.3g})"
    )


def _load(path: Path):
    if not path.is_file():
        fail(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    try:
        return ap.load(path)
    except (OSError, ValueError) as error:
        fail(f"{path} is not a saved actpatch result ({first_line(error)})")


def _same_prompts(a, b, a_path: Path, b_path: Path) -> None:
    """Refuse results whose clean prompts differ: a paired bootstrap pairs prompt i with prompt i."""
    if a.sizes["batch"] != b.sizes["batch"]:
        fail(
            f"{a_path} holds {a.sizes['batch']} prompts and {b_path} {b.sizes['batch']}: a paired comparison needs the "
            "same clean prompts in both (sweep them with the same --task, --prompts and --seed)"
        )
    clean_a, clean_b = a.attrs.get("clean_prompts"), b.attrs.get("clean_prompts")
    if clean_a is not None and clean_b is not None and list(clean_a) != list(clean_b):
        first = next(i for i, (x, y) in enumerate(zip(clean_a, clean_b)) if x != y)
        fail(
            f"{a_path} and {b_path} do not share prompts: clean prompt {first} is {clean_a[first]!r} in one and "
            f"{clean_b[first]!r} in the other (a paired comparison needs the same clean prompts, in the same order)"
        )
