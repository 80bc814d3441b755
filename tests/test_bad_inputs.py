"""Malformed inputs across the public API and its files, in one table: each must raise an error of
its own type whose message names the problem and the fix, never a stack trace from deep inside
torch and never a silently wrong (or NaN) number.

Rows are (call, exception type, message regex). A call takes the `Inputs` below: a tiny LLaMA with
prompt pairs it "solves", a tiny GPT-2 with a word tokenizer for text inputs, and a temporary folder."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers as tf
import xarray as xr

import actpatch as ap
from actpatch import metrics
from actpatch.circuits import EMBED
from actpatch.corrupt import symmetric_token_replacement
from actpatch.embedded import Recipe
from actpatch.engine.collect import baseline
from actpatch.models import cache
from actpatch.tasks.ioi import CLASSIC, NAMES
from random_dictionaries import random_dictionary
from task_files import ROWS, write_csv, write_jsonl
from tiny import tiny_model, tiny_task
from word_tokenizer import gpt2_style_model

NAN = float("nan")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    model, pairs = tiny_task("llama")
    return SimpleNamespace(
        m=model, p=pairs, w=gpt2_style_model(), tmp=tmp_path_factory.mktemp("bad-inputs")
    )


def _nan_weights_model() -> ap.Model:
    """A tiny LLaMA of its own (the shared one must stay healthy) with one NaN weight deep inside."""
    torch.manual_seed(0)
    hf = (
        tf.AutoModelForCausalLM.from_config(tiny_model("llama").hf.config)
        .eval()
        .requires_grad_(False)
    )
    hf.model.layers[1].mlp.down_proj.weight[0, 0] = NAN
    return ap.Model.from_hf(hf, name="tiny-llama-nan")


def _patched(c, values):
    with ap.patch(c.m, values):
        return c.m.last_logits(c.p.corrupt)


def _file(c, name: str, text: str) -> Path:
    path = c.tmp / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD_ROW = {
    "clean": "When John and Mary went to the store, John gave a drink to",
    "corrupt": "When Alice and Bob went to the store, Carol gave a drink to",
    "answer": " Mary",
    "wrong": " John",
}


def _jsonl(c, name: str, *rows: str) -> Path:
    return _file(c, name, "\n".join(rows) + "\n")


def row(**changes) -> dict:
    """The first well-formed file row with `changes`; a change to None drops that field."""
    return {k: v for k, v in {**ROWS[0], **changes}.items() if v is not None}


def _from_rows(c, name: str, rows: list[dict], raw: list[str] = ()) -> ap.PromptPairs:
    """Pairs read from a JSONL file of these rows (and raw lines after them)."""
    return ap.tasks.from_file(c.w, write_jsonl(c.tmp / name, rows, raw))


def _words_ioi(c) -> ap.PromptPairs:
    """Two classic IOI pairs under the word tokenizer, for corruptions of them."""
    return ap.tasks.ioi(c.w, n=2, seed=0, order="abba", templates=CLASSIC)


def _checkpoint(c, name: str, damage: str | None = None, manifest: bool = False) -> Path:
    """The tiny LLaMA saved as a checkpoint folder, then damaged as asked."""
    folder = c.tmp / name
    c.m.hf.save_pretrained(folder)
    if manifest:  # as the default model's cache writes it: every file's size and sha256
        cache._write_manifest(folder, {"path": "none", "size": 0, "mtime_ns": 0, "sha256": "0"})
    weights = folder / "model.safetensors"
    if damage == "truncate":
        with open(weights, "r+b") as file:
            file.truncate(weights.stat().st_size // 2)
    elif damage == "flip":  # same size, four bytes changed deep in the tensors: only a hash sees it
        with open(weights, "r+b") as file:
            file.seek(weights.stat().st_size // 2)
            chunk = file.read(4)
            file.seek(-4, os.SEEK_CUR)
            file.write(bytes(b ^ 0xFF for b in chunk))
    elif damage == "pickle":  # weights only as a pickle file, which can run code when read
        weights.unlink()
        torch.save({"not": "loaded"}, folder / "pytorch_model.bin")
    return folder


def _pickled_dictionary(c) -> Path:
    folder = c.tmp / "pickled-sae"
    folder.mkdir(exist_ok=True)
    (folder / "cfg.json").write_text("{}")
    (folder / "sae_weights.pt").write_bytes(b"not read")
    return folder


def _frontier(c) -> xr.DataArray:
    return ap.pareto_frontier(c.m, c.p, [ap.Site("head", 0, head=0)], sizes=[1])


def _dictionary(c, layer: int) -> ap.Dictionary:
    return random_dictionary(c.m, "resid_post", "resid_post", layer=layer, n_latents=8)


def _latent(dictionary, latent: int) -> ap.Site:
    return ap.Site("feature", dictionary.layer, latent=latent, basis=dictionary)


def _no_scores(c) -> ap.FeatureScores:
    """Scores of no node, averaged over prompts (no per-prompt estimates kept)."""
    return ap.FeatureScores((), np.zeros(0), (_dictionary(c, 0),), "denoise", "atp")


def _subspace() -> ap.Subspace:
    return ap.Subspace(ap.Site("resid_pre", 0, pos=-1), torch.eye(32)[:, :1])


BAD_INPUTS = {
    # --- dictionaries and subspaces ------------------------------------------------------
    "dictionary stored as a pickle": (
        lambda c: ap.load_dictionary(_pickled_dictionary(c), c.m),
        ap.DictionaryError,
        r"pickle files \(sae_weights.pt\).*safetensors only",
    ),
    "embedded dictionary at a layer the model lacks": (
        lambda c: ap.embedded_dictionary(c.m, recipe=Recipe(layer=14), progress=False),
        ValueError,
        r"layer 14.*layers 0..1: pass recipe=Recipe\(layer=...\)",
    ),
    "subspace patched in no known direction": (
        lambda c: ap.patch_subspace(c.m, c.p, _subspace(), direction="sideways"),
        ValueError,
        r"direction must be one of \('denoise', 'noise'\)",
    ),
    "DAS on too few pairs to split": (
        lambda c: ap.das(c.m, c.p[:2], "resid_pre[layer=0, pos=-1]", rank=1),
        ap.PairsError,
        r"training and held-out sets of at least 2 each.*pass more pairs",
    ),
    # --- feature circuits ----------------------------------------------------------------
    "feature circuit over a dictionary not given": (
        lambda c: ap.evaluate_feature_circuit(
            c.m, c.p, [_latent(_dictionary(c, 1), 0)], dictionaries=[_dictionary(c, 0)]
        ),
        ap.SiteError,
        r"not among the circuit's dictionaries.*add it to dictionaries=",
    ),
    "feature circuit latent out of range": (
        lambda c: ap.evaluate_feature_circuit(c.m, c.p, [_latent(_dictionary(c, 0), 99)]),
        ap.SiteError,
        r"latent 99 is out of range; test.resid_post.0 has latents 0..7",
    ),
    "feature scores without a dictionary": (
        lambda c: ap.feature_scores(c.m, c.p, []),
        ValueError,
        r"at least one dictionary \(actpatch.load_dictionary",
    ),
    "feature circuit chosen by two rules": (
        lambda c: ap.top_features(_no_scores(c), 3, threshold=0.1),
        ValueError,
        r"give one of n, percent or threshold, got \['n', 'threshold'\]",
    ),
    "feature curve of an unknown error mode": (
        lambda c: ap.feature_faithfulness_curve(c.m, c.p, _no_scores(c), errors=["dropped"]),
        ValueError,
        r"errors must name one or both of \('kept', 'ranked'\)",
    ),
    "feature circuit stability of averaged scores": (
        lambda c: ap.feature_circuit_stability(_no_scores(c), n=3),
        ValueError,
        r"each prompt's estimate: score them with per_prompt=True",
    ),
    # --- circuits and ablations ----------------------------------------------------------
    "circuit of a non-component site": (
        lambda c: ap.evaluate_circuit(c.m, c.p, [ap.Site("resid_pre", 1)]),
        ValueError,
        "is not a component",
    ),
    "circuit of a q site": (
        lambda c: ap.evaluate_circuit(c.m, c.p, [ap.Site("q", 1, head=0)]),
        ValueError,
        "is not a component",
    ),
    "empty circuit without components": (
        lambda c: ap.evaluate_circuit(c.m, c.p, []),
        ValueError,
        "an empty circuit needs components=",
    ),
    "circuit member outside the components": (
        lambda c: ap.evaluate_circuit(
            c.m, c.p, [ap.Site("mlp_out", 0)], components=[ap.Site("head", 0, head=0)]
        ),
        ValueError,
        "not among the components ablated around it",
    ),
    "circuit ablation 'corrupt'": (
        lambda c: ap.evaluate_circuit(c.m, c.p, [ap.Site("head", 0, head=0)], ablation="corrupt"),
        ValueError,
        "ablation must be one of",
    ),
    "circuit direction unknown": (
        lambda c: ap.evaluate_circuit(c.m, c.p, [ap.Site("head", 0, head=0)], direction="up"),
        ValueError,
        "direction must be one of",
    ),
    "circuit head out of range": (
        lambda c: ap.evaluate_circuit(c.m, c.p, [ap.Site("head", 0, head=7)]),
        ValueError,
        "head 7 is out of range",
    ),
    "frontier of a two-direction sweep": (
        lambda c: ap.pareto_frontier(
            c.m, c.p, ap.sweep(c.m, c.p, "head", direction=["denoise", "noise"])
        ),
        ValueError,
        "pick one first",
    ),
    "frontier of a resid_pre sweep": (
        lambda c: ap.pareto_frontier(c.m, c.p, ap.sweep(c.m, c.p, "resid_pre")),
        ValueError,
        "'head' or 'mlp_out' result",
    ),
    "frontier sizes too large": (
        lambda c: ap.pareto_frontier(c.m, c.p, [ap.Site("head", 0, head=0)], sizes=[3]),
        ValueError,
        r"sizes must lie in 0..1",
    ),
    "ranking order unknown": (
        lambda c: ap.circuits.ranking([], order="largest"),
        ValueError,
        "order must be one of",
    ),
    "backup effect unknown": (
        lambda c: ap.backup(c.m, c.p, ap.Site("head", 0, head=0), effect="indirect"),
        ValueError,
        "effect must be one of",
    ),
    "backup of the embeddings": (
        lambda c: ap.backup(c.m, c.p, EMBED),
        ValueError,
        "backup is studied for heads and MLPs",
    ),
    "backup_report top 0": (
        lambda c: ap.backup_report(c.m, c.p, [ap.Site("head", 0, head=0)], top=0),
        ValueError,
        "top must be a positive integer",
    ),
    "label_directions of one direction": (
        lambda c: ap.label_directions(ap.sweep(c.m, c.p, "head")),
        ValueError,
        "needs both directions",
    ),
    "sensitivity_report without corruptions": (
        lambda c: ap.sensitivity_report(ap.sweep(c.m, c.p, "head")),
        ValueError,
        "'corruption' dimension",
    ),
    "ablation while denoising": (
        lambda c: ap.sweep(c.m, c.p, "mlp_out", ablation="zero"),
        ValueError,
        "which is noising: pass direction='noise'",
    ),
    "ablation unknown": (
        lambda c: ap.sweep(c.m, c.p, "mlp_out", direction="noise", ablation="median"),
        ValueError,
        "ablation must be one of",
    ),
    "mean_over with another ablation": (
        lambda c: ap.sweep(c.m, c.p, "mlp_out", direction="noise", ablation="zero", mean_over=c.p),
        ValueError,
        "mean_over= sets the prompts averaged by ablation='mean'",
    ),
    "mean_over without an ablation": (
        lambda c: ap.sweep(c.m, c.p, "mlp_out", direction="noise", mean_over=c.p),
        ValueError,
        "mean_over= is only used by ablation='mean'",
    ),
    "minimality metric unknown": (
        lambda c: ap.minimality(c.m, c.p, [ap.Site("head", 0, head=0)], metric="nope"),
        ValueError,
        r"unknown metric 'nope'; choose one of",
    ),
    "find_circuit recovery above 1": (
        lambda c: ap.find_circuit(c.m, c.p, recovery=80),
        ValueError,
        r"recovery must be a share of the behaviour in \(0, 1\], got 80",
    ),
    "find_circuit max_size 0": (
        lambda c: ap.find_circuit(c.m, c.p, max_size=0),
        ValueError,
        "max_size must be at least 1",
    ),
    "find_circuit ranked_by and sweep keywords": (
        lambda c: ap.find_circuit(
            c.m, c.p, ranked_by=[ap.Site("head", 0, head=0)], sweep={"positions": "all"}
        ),
        ValueError,
        "sweep= sets up the ranking sweep, which ranked_by= replaces: pass one",
    ),
    "find_circuit keyword unknown": (
        lambda c: ap.find_circuit(c.m, c.p, n_resamples=10),
        TypeError,
        "find_circuit\\(\\) got an unexpected keyword argument 'n_resamples'",
    ),
    # --- path patching -----------------------------------------------------------------------
    "path receiver read before the sender": (
        lambda c: ap.patch_paths(c.m, c.p, ap.Site("head", 1, head=0), [ap.Site("q", 0, head=0)]),
        ap.SiteError,
        r"q\[layer=0, head=0\] read\(s\) the residual stream before any sender writes to it",
    ),
    "path sender that is not a head or MLP": (
        lambda c: ap.patch_paths(c.m, c.p, ap.Site("resid_pre", 0), ["logits"]),
        ap.SiteError,
        r"a sender is a head .* or an MLP",
    ),
    "path receiver misspelt": (
        lambda c: ap.patch_paths(c.m, c.p, ap.Site("head", 0, head=0), ["logit"]),
        ap.SiteError,
        r"a receiver is a head's input .*got 'logit'",
    ),
    "path direction unknown": (
        lambda c: ap.patch_paths(c.m, c.p, ap.Site("head", 0, head=0), ["logits"], direction="up"),
        ValueError,
        "direction must be one of",
    ),
    "path sweep from resid_pre": (
        lambda c: ap.sweep_paths(c.m, c.p, ["logits"], site="resid_pre"),
        ap.SiteError,
        r"path patching sends from \('head', 'mlp_out'\)",
    ),
    "path sweep layer out of range": (
        lambda c: ap.sweep_paths(c.m, c.p, ["logits"], layers=[5]),
        ap.SiteError,
        r"layer 5 is out of range: this model has layers 0..1",
    ),
    "receivers of a resid_pre sender": (
        lambda c: ap.all_receivers(c.m, ap.Site("resid_pre", 0)),
        ap.SiteError,
        r"a sender is a head .* or an MLP",
    ),
    "receivers of a sender past the last layer": (
        lambda c: ap.all_receivers(c.m, ap.Site("mlp_out", 5)),
        ap.SiteError,
        r"layer 5 is out of range",
    ),
    "smallest circuit of a sweep": (
        lambda c: ap.smallest_circuit(ap.sweep(c.m, c.p, "resid_pre", layers=[0])),
        ValueError,
        r"smallest_circuit reads a frontier, got a result with dims .*ap\.pareto_frontier",
    ),
    "smallest circuit by an unknown metric": (
        lambda c: ap.smallest_circuit(_frontier(c), metric="nope"),
        ValueError,
        r"unknown metric 'nope'; choose one of .*norm_logit_diff",
    ),
    "smallest circuit of a recovery in percent": (
        lambda c: ap.smallest_circuit(_frontier(c), recovery=80),
        ValueError,
        r"recovery is a share of the clean behaviour \(0\.8 for 80 %\), at most 2\.0; got 80",
    ),
    # --- the Gaussian-noise corruption ---------------------------------------------------------
    "noise scale negative": (
        lambda c: ap.gaussian_noise(c.m, c.p, ["X"], scale=-1),
        ap.PairsError,
        r"scale must be positive",
    ),
    "noise at an unknown position": (
        lambda c: ap.gaussian_noise(c.m, c.p, ["Q"]),
        ap.PairsError,
        r"no named position 'Q' in these prompts \(named: X, END\)",
    ),
    # --- the sweep's arguments -------------------------------------------------------------
    "site kind misspelt": (
        lambda c: ap.sweep(c.m, c.p, "resid_pr"),
        ap.SiteError,
        r"unknown site kind 'resid_pr'.*Did you mean 'resid_pre'",
    ),
    "site given as a number": (
        lambda c: ap.sweep(c.m, c.p, 3),
        TypeError,
        r"site is a kind name such as 'resid_pre'.*not int 3",
    ),
    "site given as a Site": (
        lambda c: ap.sweep(c.m, c.p, ap.Site("head", 0, head=1)),
        TypeError,
        r"To patch one Site, pass its kind and layers=",
    ),
    "TransformerLens hook without a site": (
        lambda c: ap.sweep(c.m, c.p, "blocks.1.attn.hook_result"),
        ap.SiteError,
        r"has no actpatch site",
    ),
    "Site text with a bad field": (
        lambda c: ap.Site.parse("head[layer=one]"),
        ap.SiteError,
        r"layer= must be an integer",
    ),
    "layer out of range": (
        lambda c: ap.sweep(c.m, c.p, "resid_pre", layers=[7]),
        ap.SiteError,
        r"layer 7 is out of range.*0\.\.1",
    ),
    "layer not an integer": (
        lambda c: ap.sweep(c.m, c.p, "resid_pre", layers=[0.5]),
        ap.SiteError,
        r"layer 0\.5 is not an integer index.*0\.\.1",
    ),
    "layers as a string": (
        lambda c: ap.sweep(c.m, c.p, "resid_pre", layers="1"),
        ap.SiteError,
        r"layers= takes an index or a list of indices, got str '1'",
    ),
    "layers empty": (
        lambda c: ap.sweep(c.m, c.p, "resid_pre", layers=[]),
        ap.SiteError,
        r"layers= is empty.*leave it out for all",
    ),
    "heads on an unsplit site": (
        lambda c: ap.sweep(c.m, c.p, "mlp_out", heads=[0]),
        ap.SiteError,
        r"heads= was given, but mlp_out is not split by attention head",
    ),
    "head out of range": (
        lambda c: ap.sweep(c.m, c.p, "head", heads=[4]),
        ap.SiteError,
        r"head 4 is out of range.*0\.\.3",
    ),
    "KV head out of range": (
        lambda c: ap.sweep(c.m, c.p, "v", heads=[2]),
        ap.SiteError,
        r"KV head 2 is out of range.*0\.\.1",
    ),
    "neuron out of range": (
        lambda c: ap.sweep(c.m, c.p, "neuron", neurons=[64]),
        ap.SiteError,
        r"neuron 64 is out of range.*0\.\.63",
    ),
    "neuron sweep without neurons": (
        lambda c: ap.sweep(c.m, c.p, "neuron"),
        ap.SiteError,
        r"neuron sweep needs neurons=",
    ),
    "position out of range": (
        lambda c: ap.sweep(c.m, c.p, "resid_pre", positions=[6]),
        ap.SiteError,
        r"position 6 is out of range.*0\.\.5",
    ),
    "position not an integer": (
        lambda c: ap.sweep(c.m, c.p, "resid_pre", positions=[1.0]),
        ap.SiteError,
        r"position 1\.0 is not an integer index",
    ),
    "unknown named position": (
        lambda c: ap.sweep(c.m, c.p, "resid_pre", positions=["IO"]),
        ap.SiteError,
        r"no named position 'IO'.*X, END",
    ),
    "unknown direction": (
        lambda c: ap.sweep(c.m, c.p, "resid_pre", direction="forwards"),
        ValueError,
        r"direction must be one of \('denoise', 'noise'\)",
    ),
    "unknown direction in a list": (
        lambda c: ap.sweep(c.m, c.p, "resid_pre", direction=["denoise", "up"]),
        ValueError,
        r"direction must be one of.*or a list of them",
    ),
    "unknown engine": (
        lambda c: ap.sweep(c.m, c.p, "resid_pre", engine="fast"),
        ValueError,
        r"engine must be one of \('batched', 'reference'\)",
    ),
    "chunk not a whole number": (
        lambda c: ap.sweep(c.m, c.p, "resid_pre", chunk=1.5),
        ValueError,
        r"chunk must be at least 1 \(a whole number.*got 1\.5",
    ),
    "memory budget negative": (
        lambda c: ap.sweep(c.m, c.p, "resid_pre", memory_budget=-1),
        ValueError,
        r"memory_budget must be a positive number of bytes.*4 << 30",
    ),
    "unknown ablation": (
        lambda c: ap.sweep(c.m, c.p, "resid_pre", direction="noise", ablation="gauss"),
        ValueError,
        r"ablation must be one of \('zero', 'mean', 'resample'\)",
    ),
    "ablation while denoising, resid_pre": (
        lambda c: ap.sweep(c.m, c.p, "resid_pre", ablation="zero"),
        ValueError,
        r"which is noising: pass direction='noise'",
    ),
    "a transformers model, not a Model": (
        lambda c: ap.sweep(c.m.hf, c.p, "resid_pre"),
        TypeError,
        r"model must be an actpatch Model, got LlamaForCausalLM.*Model\.from_hf",
    ),
    "pairs as a string": (
        lambda c: ap.sweep(c.m, "prompts", "resid_pre"),
        TypeError,
        r"pairs must be PromptPairs.*got str",
    ),
    "one set of pairs for several corruptions": (
        lambda c: ap.sweep_corruptions(c.m, c.p, "resid_pre"),
        TypeError,
        r"takes a dict \{corruption name: PromptPairs\}.*call actpatch\.sweep",
    ),
    # --- token ids that do not fit the model -----------------------------------------------
    "token id past the vocabulary": (
        lambda c: ap.sweep(c.m, dataclasses.replace(c.p, clean=c.p.clean + 200), "resid_pre"),
        ap.PairsError,
        r"clean token id \d+ \(prompt 0, position 0\) is outside tiny-llama's vocabulary of 101.*from_strings",
    ),
    "negative token id": (
        lambda c: ap.sweep(c.m, dataclasses.replace(c.p, corrupt=c.p.corrupt - 200), "resid_pre"),
        ap.PairsError,
        r"corrupt token id -\d+ .*outside",
    ),
    "answer id past the vocabulary": (
        lambda c: ap.sweep(c.m, dataclasses.replace(c.p, answers=c.p.answers + 500), "resid_pre"),
        ap.PairsError,
        r"answers token id \d+ \(prompt 0\) is outside",
    ),
    "prompts longer than the model's positions": (
        lambda c: ap.sweep(
            c.m,
            ap.PromptPairs(
                torch.zeros(2, 100, dtype=torch.long),
                torch.ones(2, 100, dtype=torch.long),
                torch.tensor([1, 1]),
                torch.tensor([2, 2]),
            ),
            "resid_pre",
        ),
        ap.PairsError,
        r"prompts have 100 tokens but tiny-llama has 64 positions.*shorten",
    ),
    # --- PromptPairs built by hand ---------------------------------------------------------
    "clean and corrupt of different lengths": (
        lambda c: ap.PromptPairs(c.p.clean, c.p.corrupt[:, :5], c.p.answers, c.p.wrong),
        ap.PairsError,
        r"differ in shape",
    ),
    "one answer short": (
        lambda c: ap.PromptPairs(c.p.clean, c.p.corrupt, c.p.answers[:2], c.p.wrong),
        ap.PairsError,
        r"answers must hold one token id per prompt",
    ),
    "no prompts": (
        lambda c: ap.PromptPairs(c.p.clean[:0], c.p.corrupt[:0], c.p.answers[:0], c.p.wrong[:0]),
        ap.PairsError,
        r"empty",
    ),
    "float token ids": (
        lambda c: ap.PromptPairs(c.p.clean.float(), c.p.corrupt, c.p.answers, c.p.wrong),
        ap.PairsError,
        r"got a 2-d torch\.float32 tensor.*torch\.tensor\(ids, dtype=torch\.long\)",
    ),
    "token ids as a list": (
        lambda c: ap.PromptPairs(c.p.clean.tolist(), c.p.corrupt, c.p.answers, c.p.wrong),
        ap.PairsError,
        r"tensor of token ids \(torch\.long\), got list",
    ),
    "float answer ids": (
        lambda c: ap.PromptPairs(c.p.clean, c.p.corrupt, c.p.answers.float(), c.p.wrong),
        ap.PairsError,
        r"answers must be integer token ids.*not torch\.float32",
    ),
    "NaN in the corruption's input noise": (
        lambda c: dataclasses.replace(c.p, corrupt_noise=torch.full((3, 6, 32), NAN)),
        ap.PairsError,
        r"corrupt_noise holds NaN or inf.*gaussian_noise",
    ),
    # --- prompts as text -------------------------------------------------------------------
    "empty corrupt prompt": (
        lambda c: ap.PromptPairs.from_strings(c.w, ["When John"], [" "], [" Mary"], [" John"]),
        ap.PairsError,
        r"corrupt prompt 0 is empty",
    ),
    "lists of different lengths": (
        lambda c: ap.PromptPairs.from_strings(
            c.w, ["When John", "When Mary"], ["When Mary"], [" Mary"], [" John"]
        ),
        ap.PairsError,
        r"need one clean, corrupt, answer and wrong answer per prompt; got \{'clean': 2, 'corrupt': 1",
    ),
    "answer of two tokens": (
        lambda c: ap.PromptPairs.from_strings(
            c.w, ["When John"], ["When Mary"], [" Mary John"], [" John"]
        ),
        ap.PairsError,
        r"answer ' Mary John' is 2 tokens \[' Mary', ' John'\], not one.*single token",
    ),
    "answer without its leading space": (
        lambda c: ap.PromptPairs.from_strings(
            c.w, ["When John"], ["When Mary"], ["Mary Mary"], [" John"]
        ),
        ap.PairsError,
        r"not one \(answers usually need their leading space",
    ),
    "clean and corrupt tokenize differently": (
        lambda c: ap.PromptPairs.from_strings(
            c.w, ["When John went"], ["When Mary"], [" Mary"], [" John"]
        ),
        ap.PairsError,
        r"clean has 3 tokens and corrupt has 2.*same number of tokens",
    ),
    "a prompt that is not text": (
        lambda c: ap.PromptPairs.from_strings(c.w, [1], [2], [" Mary"], [" John"]),
        ap.PairsError,
        r"clean 0 is int 1, not a string",
    ),
    "unknown corruption": (
        lambda c: ap.tasks.ioi(c.w, n=2, corruption="names"),
        ap.PairsError,
        r"unknown IOI corruption 'names'; choose one of: abc",
    ),
    # Every task checks its model the same way: a bare transformers model lacks the tokenizer and table entry.
    **{
        f"a transformers model to {name}": (
            lambda c, task=task: task(c.w.hf),
            TypeError,
            r"model must be an actpatch Model, got GPT2LMHeadModel.*actpatch\.Model\.from_hf\(hf_model, tokenizer\)",
        )
        for name, task in {
            "ioi_pairs": lambda m: ap.ioi_pairs(m),
            "ioi": lambda m: ap.tasks.ioi(m, 2),
            "ioi_groups": lambda m: ap.tasks.ioi_groups(m, 2),
            "factual_recall": lambda m: ap.tasks.factual_recall(m, 2),
            "greater_than": lambda m: ap.tasks.greater_than(m, 2),
            "induction": lambda m: ap.tasks.induction(m, 2),
            "from_file": lambda m: ap.tasks.from_file(m, "pairs.jsonl"),
        }.items()
    },
    # --- task generators and symmetric token replacement -----------------------------------
    "factual recall of no prompts": (
        lambda c: ap.tasks.factual_recall(c.w, n=0),
        ap.PairsError,
        r"n must be a positive integer, got 0",
    ),
    "factual recall of an unknown relation": (
        lambda c: ap.tasks.factual_recall(c.w, relations=["capital"]),
        ap.PairsError,
        r"unknown relation 'capital'.*country_capital",
    ),
    "greater-than of negative prompts": (
        lambda c: ap.tasks.greater_than(c.w, n=-1),
        ap.PairsError,
        r"n must be a positive integer",
    ),
    "induction repeating all of its sequence": (
        lambda c: ap.tasks.induction(c.w, length=5, repeat=5),
        ap.PairsError,
        r"1 <= repeat < length.*length=5, repeat=5",
    ),
    "induction longer than the vocabulary": (
        lambda c: ap.tasks.induction(c.w, length=10_000, repeat=3),
        ap.PairsError,
        r"ordinary word tokens.*needs 10001",
    ),
    "replacement at an unknown position": (
        lambda c: symmetric_token_replacement(c.w, _words_ioi(c), "S3", NAMES),
        ap.PairsError,
        r"no named position 'S3'.*\['END', 'IO', 'S1', 'S2', 'VERB'\]",
    ),
    "replacement by no candidate of the length": (
        lambda c: symmetric_token_replacement(c.w, _words_ioi(c), "S2", ["Mary-Jane Watson-Smith"]),
        ap.PairsError,
        r"prompt 0: no candidate can replace '\w+' \(1 tokens\).*tried 1",
    ),
    "replacement of strings without words": (
        lambda c: symmetric_token_replacement(c.w, ["The Louvre is in"], "SUBJ", ["Colosseum"]),
        ap.PairsError,
        r"needs `words`.*and `answers`",
    ),
    "replacement of strings without wrong answers": (
        lambda c: symmetric_token_replacement(
            c.w, ["The Louvre is in"], "SUBJ", ["Colosseum"], words=["Louvre"], answers=[" Paris"]
        ),
        ap.PairsError,
        r"wrong answers are missing",
    ),
    "replacement of a word not in the prompt": (
        lambda c: symmetric_token_replacement(
            c.w,
            ["The Louvre is in"],
            "SUBJ",
            {"Colosseum": " Rome"},
            words=["Louvre Museum"],
            answers=[" Paris"],
        ),
        ap.PairsError,
        r"'Louvre Museum' does not occur",
    ),
    "replacement whose answer is the clean one": (
        lambda c: symmetric_token_replacement(
            c.w,
            ["The Louvre is in"],
            "SUBJ",
            {"Colosseum": " Paris"},
            words=["Louvre"],
            answers=[" Paris"],
        ),
        ap.PairsError,
        r"no candidate .* and the answer",
    ),
    # --- task files ------------------------------------------------------------------------
    "JSONL row that is not JSON": (
        lambda c: ap.tasks.from_file(
            c.w, _jsonl(c, "broken.jsonl", json.dumps(GOOD_ROW), '{"clean": "When John",')
        ),
        ap.PairsError,
        r"broken\.jsonl, row 2 \(line 2\): not valid JSON",
    ),
    "JSONL row missing a field": (
        lambda c: ap.tasks.from_file(
            c.w,
            _jsonl(
                c, "missing.jsonl", json.dumps({k: v for k, v in GOOD_ROW.items() if k != "wrong"})
            ),
        ),
        ap.PairsError,
        r"missing\.jsonl, row 1 \(line 1\), field 'wrong': missing",
    ),
    "JSONL row that is a list": (
        lambda c: ap.tasks.from_file(
            c.w, _jsonl(c, "list.jsonl", json.dumps(list(GOOD_ROW.values())))
        ),
        ap.PairsError,
        r"must be a JSON object with fields clean",
    ),
    "JSONL row with an unknown field": (
        lambda c: ap.tasks.from_file(
            c.w, _jsonl(c, "extra.jsonl", json.dumps({**GOOD_ROW, "answers": " Mary"}))
        ),
        ap.PairsError,
        r"unknown field 'answers'; fields are clean, corrupt, answer, wrong",
    ),
    "task file of an unknown type": (
        lambda c: ap.tasks.from_file(c.w, _file(c, "pairs.txt", "x")),
        ap.PairsError,
        r"unknown file type '\.txt'; use \.jsonl",
    ),
    "task file that is not there": (
        lambda c: ap.tasks.from_file(c.w, c.tmp / "absent.jsonl"),
        ap.PairsError,
        r"absent\.jsonl: no such file",
    ),
    # Each names the file, the row, the line, the field and the reason.
    "task file row not valid JSON": (
        lambda c: _from_rows(c, "a.jsonl", [ROWS[0]], ['{"clean": "When Mary", "corrupt": }']),
        ap.PairsError,
        r"a\.jsonl, row 2 \(line 2\): not valid JSON \(Expecting value",
    ),
    "task file row a JSON list": (
        lambda c: _from_rows(c, "b.jsonl", [ROWS[0]], ['["When Mary"]']),
        ap.PairsError,
        r"b\.jsonl, row 2 \(line 2\): a row must be a JSON object.*not list",
    ),
    "task file row without a wrong answer": (
        lambda c: _from_rows(c, "c.jsonl", [ROWS[0], row(wrong=None)]),
        ap.PairsError,
        r"c\.jsonl, row 2 \(line 2\), field 'wrong': missing",
    ),
    "task file answer of two tokens": (
        lambda c: _from_rows(c, "d.jsonl", [row(answer=" Eiffel Tower")]),
        ap.PairsError,
        r"d\.jsonl, row 1 \(line 1\), field 'answer': ' Eiffel Tower' is 2 tokens \[' Eiffel', ' Tower'\], not one",
    ),
    "task file corrupt shorter than clean": (
        lambda c: _from_rows(
            c,
            "e.jsonl",
            [ROWS[0], row(corrupt="When Anna and Tom went to the store, Paul gave a drink")],
        ),
        ap.PairsError,
        r"e\.jsonl, row 2 \(line 2\), field 'corrupt': 13 tokens, but clean has 14; positions must mean the same",
    ),
    "task file rows of two lengths": (
        lambda c: _from_rows(
            c,
            "f.jsonl",
            [
                ROWS[0],
                row(
                    clean="When Mary and John went to the store, John gave a drink to the",
                    corrupt="When Anna and Tom went to the store, Paul gave a drink to the",
                ),
            ],
        ),
        ap.PairsError,
        r"f\.jsonl, row 2 \(line 2\), field 'clean': 15 tokens, but row 1 has 14; a batch has one token length",
    ),
    "task file row with a misspelt field": (
        lambda c: _from_rows(c, "g.jsonl", [row(answers=" Mary")]),
        ap.PairsError,
        r"g\.jsonl, row 1 \(line 1\): unknown field 'answers'; fields are clean, corrupt, answer, wrong",
    ),
    "task file position of an absent word": (
        lambda c: _from_rows(c, "h.jsonl", [row(**{"pos:IO": "Maria"})]),
        ap.PairsError,
        r"h\.jsonl, row 1 \(line 1\), field 'pos:IO': 'Maria' does not occur",
    ),
    "task file position of a repeated word": (
        lambda c: _from_rows(c, "i.jsonl", [row(**{"pos:IO": "John"})]),
        ap.PairsError,
        r"i\.jsonl, row 1 \(line 1\), field 'pos:IO': 'John' occurs 2 times",
    ),
    "task file position past the prompt": (
        lambda c: _from_rows(c, "j.jsonl", [row(**{"pos:S2": 14})]),
        ap.PairsError,
        r"j\.jsonl, row 1 \(line 1\), field 'pos:S2': token index 14 is outside the clean prompt's 14 tokens",
    ),
    "task file rows naming other positions": (
        lambda c: _from_rows(c, "k.jsonl", [ROWS[0], row(**{"pos:IO": None})]),
        ap.PairsError,
        r"k\.jsonl, row 2 \(line 2\): names positions \['END', 'S2'\], but row 1 names",
    ),
    "task file row with an empty prompt": (
        lambda c: _from_rows(c, "l.jsonl", [row(clean="")]),
        ap.PairsError,
        r"l\.jsonl, row 1 \(line 1\), field 'clean': must be a non-empty string",
    ),
    "task file of no rows": (
        lambda c: _from_rows(c, "m.jsonl", []),
        ap.PairsError,
        r"m\.jsonl.*no rows",
    ),
    # CSV lines count the header: row 2 is line 3.
    "CSV row answer of two tokens": (
        lambda c: ap.tasks.from_file(
            c.w, write_csv(c.tmp / "pairs.csv", [ROWS[0], row(answer=" Eiffel Tower")])
        ),
        ap.PairsError,
        r"pairs\.csv, row 2 \(line 3\), field 'answer': ' Eiffel Tower' is 2 tokens",
    ),
    "CSV without a corrupt column": (
        lambda c: ap.tasks.from_file(c.w, write_csv(c.tmp / "short.csv", [row(corrupt=None)])),
        ap.PairsError,
        r"short\.csv, row 1 \(line 2\), field 'corrupt': missing",
    ),
    # --- patch values, activations and weights holding NaN ----------------------------------
    "NaN patch value": (
        lambda c: _patched(c, {ap.Site("resid_pre", 1): torch.full((3, 6, 32), NAN)}),
        ap.NonFiniteError,
        r"resid_pre\[layer=1\]: the patch value holds NaN or inf.*captured from a finite run",
    ),
    "patch value of the wrong shape": (
        lambda c: _patched(c, {ap.Site("resid_pre", 1): torch.zeros(3, 2, 32)}),
        ap.PatchShapeError,
        r"patch value has shape \(3, 2, 32\) but the activation there has shape \(3, 6, 32\)",
    ),
    "weights holding NaN": (
        lambda c: ap.sweep(_nan_weights_model(), c.p, "resid_pre", check_baseline=False),
        ap.NonFiniteError,
        r"NaN or inf logits.*first: model\.layers\.1\.mlp\.down_proj\.weight.*Reload the model",
    ),
    "metrics of NaN logits": (
        lambda c: metrics.averaged(torch.full((3, 101), NAN), baseline(c.m, c.p)),
        ap.NonFiniteError,
        r"logits hold NaN or inf.*every metric would be NaN",
    ),
    "tokens as a list": (
        lambda c: ap.capture(c.m, c.p.clean.tolist(), [ap.Site("resid_pre", 0)]),
        TypeError,
        r"tokens must be a \(batch, pos\) tensor of token ids, got list",
    ),
    "capture of a site name": (
        lambda c: ap.capture(c.m, c.p.clean, ["resid_pre"]),
        ap.SiteError,
        r"site 'resid_pre' names no layer",
    ),
    # --- estimates and results -------------------------------------------------------------
    "unknown attribution method": (
        lambda c: ap.attribute(c.m, c.p, "head", method="magic"),
        ValueError,
        r"method must be one of \('atp', 'atp\*', 'ig'\)",
    ),
    "attribution method misspelt": (
        lambda c: ap.attribute(c.m, c.p, "head", method="atp-star"),
        ValueError,
        r"method must be one of \('atp', 'atp\*', 'ig'\)",
    ),
    "integrated gradients of no steps": (
        lambda c: ap.attribute(c.m, c.p, "head", method="ig", steps=0),
        ValueError,
        r"steps must be a positive integer",
    ),
    "GradDrop with integrated gradients": (
        lambda c: ap.attribute(c.m, c.p, "head", method="ig", graddrop=True),
        ValueError,
        r"graddrop goes with method='atp' or 'atp\*'",
    ),
    "verifying an exact sweep": (
        lambda c: ap.verify(c.m, c.p, ap.sweep(c.m, c.p, "head", engine="reference")),
        ValueError,
        r"verify\(\) takes the result of actpatch.attribute",
    ),
    "verifying a negative top_k": (
        lambda c: ap.verify(c.m, c.p, None, top_k=-1),
        ValueError,
        r"top_k must be a whole number of sites, 0 or more, got -1",
    ),
    "verifying a fractional top_k": (
        lambda c: ap.verify(c.m, c.p, None, top_k=2.5),
        ValueError,
        r"top_k must be a whole number of sites, 0 or more, got 2\.5",
    ),
    "verifying a top_k of True": (
        lambda c: ap.verify(c.m, c.p, None, top_k=True),
        ValueError,
        r"top_k must be a whole number of sites, 0 or more, got True",
    ),
    "verifying a negative sample": (
        lambda c: ap.verify(c.m, c.p, None, sample=-3),
        ValueError,
        r"sample must be a whole number of sites, 0 or more, got -3",
    ),
    "unknown metric to verify": (
        lambda c: ap.verify(c.m, c.p, ap.attribute(c.m, c.p, "head"), metric="probability"),
        ValueError,
        r"unknown metric 'probability'; choose one of: norm_logit_diff, logit_diff",
    ),
    "metric an estimate lacks": (
        lambda c: ap.verify(c.m, c.p, ap.attribute(c.m, c.p, "head"), metric="kl"),
        ValueError,
        r"this estimate has no metric 'kl': attribution estimates only norm_logit_diff, logit_diff",
    ),
    "saving something that is not a result": (
        lambda c: ap.save([1, 2], c.tmp / "r.nc"),
        TypeError,
        r"save\(\) writes the xarray\.DataArray a sweep returns, not list",
    ),
    "loading a result that is not there": (
        lambda c: ap.load(c.tmp / "none.nc"),
        FileNotFoundError,
        r"none\.nc: no such result file.*actpatch\.save",
    ),
    "loading a file that is not a result": (
        lambda c: ap.load(_file(c, "notes.nc", "not netCDF")),
        ValueError,
        r"notes\.nc is not a result written by actpatch\.save",
    ),
    # --- models and checkpoints ------------------------------------------------------------
    "a family not in the table": (
        lambda c: ap.Model.from_hf(
            tf.AutoModelForCausalLM.from_config(
                tf.OPTConfig(
                    num_hidden_layers=1,
                    hidden_size=16,
                    ffn_dim=32,
                    num_attention_heads=2,
                    vocab_size=50,
                    word_embed_proj_dim=16,
                )
            )
        ),
        ap.UnsupportedArchitecture,
        r"OPTForCausalLM is not in actpatch's architecture table\. Add an entry for it to ARCHS in src/actpatch/models/arch\.py",
    ),
    "unsupported dtype": (
        lambda c: ap.load_model(c.tmp, dtype="int8"),
        ValueError,
        r"dtype 'int8' is not supported; choose one of: float32, bfloat16",
    ),
    "checkpoint folder that does not exist": (
        lambda c: ap.load_model(c.tmp / "nowhere"),
        ap.ModelNotFound,
        r"nowhere' looks like a local path, but it does not exist",
    ),
    "truncated weights": (
        lambda c: ap.load_model(_checkpoint(c, "truncated", "truncate")),
        ap.CorruptCheckpoint,
        r"truncated: a safetensors weights file is damaged.*truncated or not a safetensors file\. Save or download",
    ),
    "truncated weights beside a manifest": (
        lambda c: ap.load_model(_checkpoint(c, "truncated-cache", "truncate", manifest=True)),
        ap.CorruptCheckpoint,
        r"does not match its manifest\.json: model\.safetensors has the wrong size \(truncated or replaced\)",
    ),
    "tampered weights beside a manifest": (
        lambda c: ap.load_model(_checkpoint(c, "tampered-cache", "flip", manifest=True)),
        ap.CorruptCheckpoint,
        r"model\.safetensors does not match its sha256.*delete the folder and call load_model\(\) with no argument",
    ),
    "weights only as a pickle": (
        lambda c: ap.load_model(_checkpoint(c, "pickled", "pickle")),
        ap.CorruptCheckpoint,
        r"weights only as pickle files \(pytorch_model\.bin\), which can run code.*save_pretrained\(new_folder\) writes safetensors",
    ),
    "device and device_map together": (
        lambda c: ap.load_model(c.tmp, device="cpu", device_map="auto"),
        ValueError,
        r"give device= .* or device_map= .*, not both",
    ),
    "max_memory without device_map": (
        lambda c: ap.load_model(c.tmp, max_memory={"cpu": "1GiB"}),
        ValueError,
        r"max_memory= bounds what device_map= places.*device_map='auto'",
    ),
    "max_memory too small to hold the model": (
        lambda c: ap.load_model(
            _checkpoint(c, "offloaded"), device_map="auto", max_memory={"cpu": 10_000}
        ),
        ValueError,
        r"device_map offloaded part of .*offloaded.* to disk or CPU.*Raise max_memory",
    ),
}


@pytest.mark.parametrize("call, error, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_gets_a_clear_error(inputs, call, error, message):
    with pytest.raises(error, match=message) as raised:
        call(inputs)
    # The error is ours, raised where the input is first understood, not torch's from deep inside.
    assert "site-packages" not in str(raised.traceback[-1].path)
    assert ap.attached_hooks(inputs.m) == 0


# Public functions no row reaches, and why; each is a gap to close, not a rule.
UNCHECKED = {
    "attached_hooks": "takes a model only",
}


def _names_called(function) -> set[str]:
    """Every global and attribute name a row's function reads, through the functions it is given
    as defaults and this module's helpers it calls."""
    names, seen, todo = set(), set(), [function]
    while todo:
        function = todo.pop()
        if function in seen:
            continue
        seen.add(function)
        codes = [function.__code__]
        while codes:  # the function's own code, then its nested lambdas and comprehensions
            code = codes.pop()
            names |= set(code.co_names)
            codes += [c for c in code.co_consts if inspect.iscode(c)]
        todo += [d for d in function.__defaults__ or () if inspect.isfunction(d)]
        todo += [
            globals()[n]
            for n in names
            if n.startswith("_") and inspect.isfunction(globals().get(n))
        ]
    return names


def test_the_table_reaches_every_public_function():
    public = {name for name in ap.__all__ if inspect.isfunction(getattr(ap, name))}
    reached = set().union(*(_names_called(call) for call, _, _ in BAD_INPUTS.values()))
    assert sorted(public - reached - UNCHECKED.keys()) == [], (
        "a public function with no bad-input row"
    )
    assert sorted(UNCHECKED.keys() & reached) == [], "reached now: take it off UNCHECKED"
    raised = {error for _, error, _ in BAD_INPUTS.values()}
    assert {
        ap.SiteError,
        ap.PairsError,
        ap.NonFiniteError,
        ap.CorruptCheckpoint,
        TypeError,
        ValueError,
    } <= raised


def test_the_shared_model_is_still_healthy(inputs):
    """The rows above must not have damaged the model the others share (e.g. by leaving NaN in it)."""
    assert all(bool(torch.isfinite(p).all()) for p in inputs.m.hf.parameters())
    assert ap.sweep(inputs.m, inputs.p, "resid_pre", layers=[0], positions="all").sel(
        metric="norm_logit_diff"
    ).item() == pytest.approx(1.0, abs=1e-4)
