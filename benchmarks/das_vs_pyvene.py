"""Distributed alignment search, actpatch against pyvene 0.1.8, on the same IOI problem.

The problem: SmolLM2-135M-Instruct (float32, CPU), IOI prompts whose corrupt prompt swaps subject
and indirect object (`ap.tasks.ioi(model, n, corruption="io_s_swap")`: the same names, roles
swapped); a rank-`--rank` subspace of `resid_pre` at layer `--layer`, final position, learned so
that patching it from the clean run into the corrupt run makes the model name the clean prompt's
indirect object. Both tools get the same pairs, the same train/test split (das's own rule, seed
`--seed`), the same starting U (das's `initial_rotation`, copied into pyvene's
`LowRankRotatedSpaceIntervention` through its orthogonal parametrisation), the same optimiser
(Adam, `--lr`), the same loss (cross-entropy of the patched run's final-position logits on the
counterfactual answers) and the same batches (every training pair at every step, `--steps`).
Each tool runs in its own fresh process:
  - actpatch: `ap.das(..., guards=False)` (training loss checked only at the start and the end,
    so early stopping cannot cut it short); with `--guards`, the same again with its default
    guards except the re-initialised model's search (`Guards(n_random=20, random_model=False)`);
  - pyvene (in its own virtual environment): one `IntervenableModel` with a
    `LowRankRotatedSpaceIntervention` at `block_input` of the layer (= resid_pre), unit "pos",
    trained as its DAS tutorial does: every step runs the source forward and the intervened base
    forward (`intervenable(base, [source], {"sources->base": ...})`).
Reported: held-out interchange-intervention accuracy (IIA: the patched run's top token is the
clean indirect object) and normalised logit difference (ratio of means, as actpatch defines it),
each tool's wall time and CPU time (the process's, all threads; model loading excluded;
actpatch's whole `das` call, capture and held-out evaluation included; pyvene's training loop and
held-out evaluation) and peak memory, the other processes' CPU use meanwhile (on a shared machine
the wall time mostly measures the others: read the CPU time), and |cos| between the two learned subspaces (rank 1: the angle
between the directions; rank r: the mean squared cosine of the principal angles).

    python -m venv --system-site-packages /work/venvs/pyvene      # once; see below
    /work/venvs/pyvene/bin/pip install --no-deps pyvene==0.1.8
    python benchmarks/das_vs_pyvene.py [--pyvene-python /work/venvs/pyvene/bin/python]
        [--prompts 32] [--steps 20] [--layer 24] [--rank 1]

pyvene 0.1.8 declares dependencies (datasets, plotnine, ipywidgets, sentencepiece, ...) that it
does not import for this use, and would let pip replace the environment's torch; installed with
`--no-deps` into a virtual environment that sees the system's packages (torch 2.13.0,
transformers, accelerate, numpy), it imports and runs (it prints that nnsight is not detected:
only its nnsight backend needs it). Raw records go to benchmarks/results/das_vs_pyvene/."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "das_vs_pyvene"
PYVENE_PYTHON = Path("/work/venvs/pyvene/bin/python")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32, help="IOI pairs (half held out)")
    parser.add_argument(
        "--steps", type=int, default=20, help="Adam steps, each on every training pair"
    )
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument(
        "--layer", type=int, default=24, help="resid_pre of this layer, final position"
    )
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="the split's and U's start's seed")
    parser.add_argument("--pyvene-python", type=Path, default=PYVENE_PYTHON)
    parser.add_argument(
        "--guards",
        action="store_true",
        help="also time actpatch's das with its guards (a second search)",
    )
    parser.add_argument("--worker", choices=("actpatch", "pyvene"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent / "src"))  # this checkout's actpatch, in every process
    if args.worker == "actpatch":
        return run_actpatch(args)
    if args.worker == "pyvene":
        return run_pyvene(args)
    if not args.pyvene_python.exists():
        raise SystemExit(
            f"{args.pyvene_python} is missing: python -m venv --system-site-packages "
            "/work/venvs/pyvene && /work/venvs/pyvene/bin/pip install --no-deps pyvene==0.1.8"
        )
    from sweep_peers import _run

    (RESULTS / "logs").mkdir(parents=True, exist_ok=True)
    spec = make_spec(args)
    spec_path = RESULTS / "spec.json"
    spec_path.write_text(json.dumps(spec))
    print(
        f"SmolLM2-135M-Instruct; {args.prompts} IOI pairs (io_s_swap) × {len(spec['clean'][0])} "
        f"tokens, {len(spec['train'])} train / {len(spec['test'])} held out; resid_pre[layer="
        f"{args.layer}, pos=END], rank {args.rank}, {args.steps} Adam steps at lr {args.lr}; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start\n",
        flush=True,
    )
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    records = {}
    for tool, python in (("actpatch", sys.executable), ("pyvene", str(args.pyvene_python))):
        out = RESULTS / f"{tool}.json"
        print(f"{tool} ...", end=" ", flush=True)
        load = os.getloadavg()[0]
        os.environ.update(env)  # _run starts the worker with this process's environment
        record = _run(
            [
                python,
                str(Path(__file__).resolve()),
                "--worker",
                tool,
                "--spec",
                str(spec_path),
                "--out",
                str(out),
            ],
            out,
            RESULTS / "logs" / f"{tool}.log",
        )
        record["load_avg_1min_before"] = load
        print(
            f"{record['runs'][0]['wall_s']:.1f} s (other processes used "
            f"{record['others_cores_during']:.2f} cores meanwhile)",
            flush=True,
        )
        records[tool] = record
    summary = {
        "spec": {k: v for k, v in spec.items() if k not in ("clean", "corrupt", "U0")},
        "records": records,
        "environment": environment(args.pyvene_python),
    }
    summary["agreement"] = agreement(records)
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=1))
    print_report(summary)
    print(f"raw results: {RESULTS.relative_to(HERE.parent)}/")


def make_spec(args: argparse.Namespace) -> dict:
    """The pairs (token ids), the split and the starting U both tools use."""
    import torch

    import actpatch as ap
    from actpatch.subspace.das import _split, initial_rotation

    model = ap.load_model()
    pairs = ap.tasks.ioi(model, args.prompts, corruption="io_s_swap", seed=args.seed)
    train, test = _split(len(pairs), 0.5, args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    U0 = initial_rotation(model.dims.d_model, args.rank, generator, args.seed).weight.T
    end = pairs.positions["END"]
    if not bool((end == pairs.clean.shape[1] - 1).all()):
        raise SystemExit("END is not every prompt's last token: the pyvene worker assumes it is")
    return {
        "checkpoint": model.provenance["checkpoint"],
        "prompts": args.prompts,
        "seed": args.seed,
        "layer": args.layer,
        "rank": args.rank,
        "steps": args.steps,
        "lr": args.lr,
        "guards": args.guards,
        "end": int(end[0]),
        "clean": pairs.clean.tolist(),
        "corrupt": pairs.corrupt.tolist(),
        "answers": pairs.answers.tolist(),
        "wrong": pairs.wrong.tolist(),
        "train": train.tolist(),
        "test": test.tolist(),
        "U0": U0.detach().tolist(),
        "example": [pairs.clean_text[0], pairs.corrupt_text[0]],
    }


# ---- actpatch's worker (a fresh process, the main environment) -------------------------------------


def run_actpatch(args: argparse.Namespace) -> None:
    import torch
    from _measure import measured, write_json

    import actpatch as ap
    from actpatch.subspace.das import Training
    from actpatch.subspace.guards import Guards

    spec = json.loads(Path(args.spec).read_text())
    model = ap.load_model()
    pairs = ap.tasks.ioi(model, spec["prompts"], corruption="io_s_swap", seed=spec["seed"])
    if pairs.clean.tolist() != spec["clean"] or pairs.corrupt.tolist() != spec["corrupt"]:
        raise SystemExit("the regenerated pairs differ from the spec's")
    site = f"resid_pre[layer={spec['layer']}, pos=END]"
    training = Training(
        steps=spec["steps"],
        lr=spec["lr"],
        batch_size=len(spec["train"]),
        check_every=max(spec["steps"], 1),
        patience=spec["steps"] + 2,
    )
    runs = []
    for name, guards in [
        ("actpatch das, guards=False", False),
        *(
            [
                (
                    "actpatch das, guards (20 random subspaces, no random-model search)",
                    Guards(n_random=20, random_model=False),
                )
            ]
            if spec["guards"]
            else []
        ),
    ]:
        record = {"name": name}
        cpu = time.process_time()
        with measured(record):
            found = ap.das(
                model,
                pairs,
                site,
                rank=spec["rank"],
                seed=spec["seed"],
                training=training,
                guards=guards,
                n_boot=1000,
            )
        record["cpu_s"] = time.process_time() - cpu
        if list(found.train) != spec["train"] or list(found.test) != spec["test"]:
            raise SystemExit("das split the pairs differently from the spec")
        table = found.table.sel(stat="value")
        record.update(
            iia=float(table.sel(control="subspace", metric="iia")),
            iia_interval=[
                float(found.table.sel(control="subspace", metric="iia", stat=s))
                for s in ("lo", "hi")
            ],
            norm_logit_diff=float(table.sel(control="subspace", metric="norm_logit_diff")),
            train_iia=float(table.sel(control="subspace_train", metric="iia")),
            steps_run=found.table.attrs["steps_run"],
            flags=list(found.flags),
            U=found.subspace.U.tolist(),
        )
        if guards:
            record["full_component_iia"] = float(table.sel(control="full_component", metric="iia"))
            record["random_subspaces_iia"] = float(
                table.sel(control="random_subspaces", metric="iia")
            )
        runs.append(record)
    write_json(args.out, {"runs": runs, "threads": torch.get_num_threads()})


# ---- pyvene's worker (a fresh process, pyvene's environment; no actpatch import) -----------------


def run_pyvene(args: argparse.Namespace) -> None:
    import pyvene as pv
    import torch
    import torch.nn.functional as F
    import transformers as tf
    from _measure import measured, write_json

    spec = json.loads(Path(args.spec).read_text())
    hf = tf.AutoModelForCausalLM.from_pretrained(spec["checkpoint"], dtype=torch.float32).eval()
    clean, corrupt = torch.tensor(spec["clean"]), torch.tensor(spec["corrupt"])
    answers, wrong = torch.tensor(spec["answers"]), torch.tensor(spec["wrong"])
    train, test = torch.tensor(spec["train"]), torch.tensor(spec["test"])
    end, U0 = spec["end"], torch.tensor(spec["U0"])
    record = {"name": f"pyvene {pv.__version__ if hasattr(pv, '__version__') else '0.1.8'}"}
    cpu = time.process_time()
    with measured(record):
        config = pv.IntervenableConfig(
            representations=[
                pv.RepresentationConfig(
                    layer=spec["layer"],
                    component="block_input",
                    unit="pos",
                    low_rank_dimension=spec["rank"],
                )
            ],
            intervention_types=pv.LowRankRotatedSpaceIntervention,
        )
        intervenable = pv.IntervenableModel(config, hf)
        intervenable.disable_model_gradients()
        intervention = next(iter(intervenable.interventions.values()))
        intervention = intervention[0] if isinstance(intervention, tuple) else intervention
        intervention.rotate_layer.weight = U0  # the same start as actpatch (orthonormal columns)
        start_error = float((intervention.rotate_layer.weight - U0).abs().max())
        optimiser = torch.optim.Adam(intervention.rotate_layer.parameters(), lr=spec["lr"])

        def patched(rows: torch.Tensor) -> torch.Tensor:
            where = [[[end]] * len(rows)]
            _, out = intervenable(
                {"input_ids": corrupt[rows]},
                [{"input_ids": clean[rows]}],
                {"sources->base": (where, where)},
            )
            return out.logits[:, -1].float()

        for _ in range(spec["steps"]):
            loss = F.cross_entropy(patched(train), answers[train])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            logits = patched(test)
            clean_logits = hf(input_ids=clean[test]).logits[:, -1].float()
            corrupt_logits = hf(input_ids=corrupt[test]).logits[:, -1].float()
    record["cpu_s"] = time.process_time() - cpu
    a, w = answers[test][:, None], wrong[test][:, None]

    def logit_diff(x: torch.Tensor) -> float:
        return float((x.gather(1, a) - x.gather(1, w)).mean())

    gap = logit_diff(clean_logits) - logit_diff(corrupt_logits)
    record.update(
        iia=float((logits.argmax(-1) == answers[test]).float().mean()),
        norm_logit_diff=(logit_diff(logits) - logit_diff(corrupt_logits)) / gap,
        start_error=start_error,
        U=intervention.rotate_layer.weight.detach().tolist(),
    )
    write_json(args.out, {"runs": [record], "threads": torch.get_num_threads()})


# ---- the report -----------------------------------------------------------------------------------


def agreement(records: dict) -> dict:
    """How close the two learned subspaces are (mean squared cosine of the principal angles)."""
    import numpy as np

    ours = np.asarray(records["actpatch"]["runs"][0]["U"])
    theirs = np.asarray(records["pyvene"]["runs"][0]["U"])
    cosines = np.linalg.svd(ours.T @ theirs, compute_uv=False)
    return {"subspace_cos2": float((cosines**2).mean()), "largest_cos": float(cosines[0])}


def print_report(summary: dict) -> None:
    rows = [*summary["records"]["actpatch"]["runs"], *summary["records"]["pyvene"]["runs"]]
    print(
        f"\n{'run':<70}{'held-out IIA':>14}{'norm LD':>10}{'wall s':>9}{'CPU s':>9}"
        f"{'peak Δ MiB':>12}"
    )
    for r in rows:
        print(
            f"{r['name']:<70}{r['iia']:>14.3f}{r['norm_logit_diff']:>10.3f}"
            f"{r['wall_s']:>9.1f}{r['cpu_s']:>9.1f}{r['peak_delta_mib']:>12.0f}"
        )
    for tool, record in summary["records"].items():
        print(
            f"{tool}: other processes used {record['others_cores_during']:.2f} cores while it ran "
            f"(load average {record['load_avg_1min_before']:.2f} before); {record['threads']} threads"
        )
    print(
        f"learned subspaces: mean cos² of principal angles {summary['agreement']['subspace_cos2']:.4f}"
    )
    if len(summary["records"]["actpatch"]["runs"]) < 2:
        return
    extra = summary["records"]["actpatch"]["runs"][1]
    print(
        f"actpatch's guards: full component IIA {extra['full_component_iia']:.3f}, random "
        f"subspaces IIA {extra['random_subspaces_iia']:.3f}, flags: {extra['flags'] or 'none'}"
    )


def environment(pyvene_python: Path) -> dict:
    import subprocess
    from importlib.metadata import version

    theirs = subprocess.run(
        [
            str(pyvene_python),
            "-c",
            "from importlib.metadata import version; print(version('pyvene'), version('torch'))",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return {
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "pyvene_env": theirs,
        "time": time.strftime("%Y-%m-%d %H:%M"),
    }


if __name__ == "__main__":
    main()
