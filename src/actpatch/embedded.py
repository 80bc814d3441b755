"""`embedded_dictionary`: a TopK SAE for the embedded model, trained offline on first use, cached.

No pretrained dictionary of SmolLM2-135M-Instruct can be downloaded where actpatch runs offline,
so the first call trains one (`train.py`) on text already on the machine and saves it in
SAELens's folder format (`cfg.json` + `sae_weights.safetensors`), which SAELens, our
`load_dictionary` and other tools read. Later calls load that folder. Like the converted weights
(`models/cache.py`), the folder carries a `manifest.json`, written last, recording what it was
trained from (the recipe, the model's weights fingerprint, a hash of the training tokens, torch's
version) and each file's sha256; a folder that disagrees with it is retrained, with a warning.

The text: the Python reference's topic pages that ship with every CPython (`pydoc_data.topics`,
~113k SmolLM2 tokens of English prose and code, the source of `help('if')`) and the prompts of
the bundled IOI, greater-than and factual-recall tasks. The site: `resid_post` of layer 14 of
SmolLM2's 30, the residual stream half-way through, where IOI's name information is carried from
the names to the last position (docs/features.md gives the measured quality).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from actpatch import hooks
from actpatch.bases.dictionary import Dictionary
from actpatch.bases.train import TopKFit, train_topk
from actpatch.models.cache import cache_root
from actpatch.models.model import Model, weights_fingerprint

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bump when the trainer, the text or the saved files change, so every cached dictionary retrains."""
CONFIG, WEIGHTS, MANIFEST = "cfg.json", "sae_weights.safetensors", "manifest.json"


@dataclass(frozen=True)
class Recipe:
    """What a dictionary is trained on and how; every field is recorded in the manifest."""

    layer: int = 14  # resid_post of this layer (SmolLM2 has 30)
    n_latents: int = 2048  # 3.6 × d_model: small, so that first use trains in minutes on a CPU
    k: int = 32
    tokens: int = 16_384  # of text run through the model (each row's first position is dropped)
    context: int = 128  # tokens per row of text
    epochs: int = 4
    batch: int = 128
    lr: float = 2e-3
    seed: int = 0


def embedded_dictionary(
    model: Model | None = None,
    *,
    recipe: Recipe | None = None,
    tokens: Tensor | None = None,
    progress: bool = True,
) -> Dictionary:
    """The embedded model's TopK SAE at resid_post of `recipe.layer`, trained on first use.

    The first call collects activations and trains (minutes on two CPU cores, with a
    progress bar) into `cache_root()`, beside the converted weights; later calls load the folder
    (a second or two, most of it re-deriving the training tokens to check the cache against). `tokens` (rows, context) replaces the built-in text (for other models,
    e.g. the tests' tiny ones); `model` defaults to `load_model()`."""
    if model is None:
        from actpatch.models.load import load_model

        model = load_model()
    recipe = recipe or Recipe()
    if not 0 <= recipe.layer < model.dims.n_layers:
        raise ValueError(
            f"the dictionary's recipe reads resid_post of layer {recipe.layer}, but {model.name} has "
            f"layers 0..{model.dims.n_layers - 1}: pass recipe=Recipe(layer=...) with one it has"
        )
    if tokens is not None and (tokens.ndim != 2 or tokens.dtype != torch.long):
        raise ValueError(
            f"tokens must be token ids, (rows, context) of torch.long, got {tuple(tokens.shape)} "
            f"{tokens.dtype}: tokenize the text with the model's tokenizer"
        )
    if tokens is None:
        tokens = training_tokens(model, recipe)
    folder = dictionary_folder(model, recipe)
    expected = _expected_manifest(model, recipe, tokens)
    problem = _why_invalid(folder, expected)
    if problem is not None:
        if folder.exists():
            log.warning("Retraining the cached dictionary in %s: %s", folder, problem)
        else:
            log.info("Training %s's dictionary into %s (once)", model.name, folder)
        _build(folder, model, recipe, tokens, expected, progress)
    from actpatch.bases.load import load_dictionary

    return load_dictionary(folder, model)


def dictionary_folder(model: Model, recipe: Recipe) -> Path:
    """Where `embedded_dictionary` caches `model`'s dictionary for `recipe`'s layer."""
    slug = re.sub(r"[^a-z0-9]+", "-", model.name.lower()).strip("-") or "model"
    return cache_root() / f"{slug}.sae.resid_post.{recipe.layer}"


def training_tokens(model: Model, recipe: Recipe) -> Tensor:
    """(rows, context) token ids: the task prompts first, then rows of the Python reference.

    The reference's rows are drawn in a fixed shuffled order; rows left over are held out
    (`held_out_tokens`) for measuring the dictionary."""
    rows = _task_rows(model, recipe.context)
    need = max(0, -(-recipe.tokens // recipe.context) - len(rows))
    reference = _reference_rows(model, recipe.context, recipe.seed)
    return torch.cat([rows, reference[:need]])[: -(-recipe.tokens // recipe.context)]


def held_out_tokens(model: Model, recipe: Recipe, n_rows: int) -> Tensor:
    """(n_rows, context) rows of the Python reference that `training_tokens` never uses."""
    rows = _task_rows(model, recipe.context)
    need = max(0, -(-recipe.tokens // recipe.context) - len(rows))
    reference = _reference_rows(model, recipe.context, recipe.seed)
    if need + n_rows > len(reference):
        raise ValueError(f"only {len(reference) - need} held-out rows exist, asked for {n_rows}")
    return reference[len(reference) - n_rows :]


def collect(
    model: Model, tokens: Tensor, layer: int, *, batch: int = 16, progress: bool = False
) -> Tensor:
    """(rows · (context − 1), d_model) float32: resid_post of `layer`, the first position of each
    row left out (the attention sink, whose norm is ~150 times the others' in SmolLM2)."""
    from tqdm.auto import tqdm

    found: list[Tensor] = []
    for start in tqdm(range(0, len(tokens), batch), desc="reading the text", disable=not progress):
        hidden = hooks.resid_post_only(model, tokens[start : start + batch], layer)
        found.append(hidden[:, 1:].to(torch.float32).reshape(-1, hidden.shape[-1]))
    return torch.cat(found).cpu()


def _task_rows(model: Model, context: int) -> Tensor:
    """The bundled tasks' clean and corrupt prompts, one stream cut into rows of `context`."""
    from actpatch.tasks.factual import factual_recall
    from actpatch.tasks.greater_than import greater_than
    from actpatch.tasks.ioi import ioi

    ids: list[int] = []
    # Seeds other than the defaults, so that the default IOI pairs stay held out.
    for pairs in (
        ioi(model, 64, seed=101),
        greater_than(model, 32, seed=101),
        factual_recall(model, 32, seed=101),
    ):
        for text in (*(pairs.clean_text or ()), *(pairs.corrupt_text or ())):
            ids += model.tokenizer(text + "\n", add_special_tokens=False)["input_ids"]
    usable = len(ids) // context * context
    return torch.tensor(ids[:usable], dtype=torch.long).view(-1, context)


def _reference_rows(model: Model, context: int, seed: int) -> Tensor:
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    text = "\n\n".join(topics[name] for name in sorted(topics))
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    usable = len(ids) // context * context
    rows = torch.tensor(ids[:usable], dtype=torch.long).view(-1, context)
    return rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))]


def _expected_manifest(model: Model, recipe: Recipe, tokens: Tensor) -> dict[str, Any]:
    digest = hashlib.sha256(tokens.to(torch.int64).contiguous().numpy().tobytes())
    return {
        "format_version": FORMAT_VERSION,
        "model": model.name,
        "weights_fingerprint": weights_fingerprint(model),
        "recipe": asdict(recipe),
        "tokens": {"shape": list(tokens.shape), "sha256": digest.hexdigest()},
        "torch": ".".join(torch.__version__.split("+")[0].split(".")[:2]),
    }


def _why_invalid(folder: Path, expected: dict[str, Any]) -> str | None:
    if not folder.is_dir():
        return "no cached folder"
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{MANIFEST} is missing (an interrupted or half-written training)"
    except (OSError, ValueError) as err:
        return f"{MANIFEST} is unreadable ({err})"
    if not isinstance(manifest, dict):
        return f"{MANIFEST} is not a JSON object"
    for key, want in expected.items():
        if manifest.get(key) != want:
            return f"{key} changed: cached {manifest.get(key)!r}, now {want!r}"
    files = manifest.get("files")
    if not isinstance(files, dict):
        return f"{MANIFEST} lists no files"
    present = {p.name for p in folder.iterdir()} - {MANIFEST}
    if present != set(files):
        return f"files differ from the manifest: {sorted(present ^ set(files))}"
    for name, sha in files.items():
        if _sha256(folder / name) != sha:
            return f"{name} does not match its sha256 (corrupted or modified)"
    return None


def _build(
    folder: Path,
    model: Model,
    recipe: Recipe,
    tokens: Tensor,
    manifest: dict,
    progress: bool,
) -> None:
    """Train into a temp folder beside `folder`, then swap it into place (a crash never leaves a
    folder that looks complete)."""
    started = time.perf_counter()
    acts = collect(model, tokens, recipe.layer, progress=progress)
    collected = time.perf_counter()
    fit = train_topk(
        acts,
        recipe.n_latents,
        min(recipe.k, recipe.n_latents),
        epochs=recipe.epochs,
        batch=recipe.batch,
        lr=recipe.lr,
        seed=recipe.seed,
        progress=progress,
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}.building-", dir=folder.parent))
    try:
        write_saelens(building, fit, model.name, recipe.layer, context=recipe.context)
        files = {p.name: _sha256(p) for p in sorted(building.iterdir())}
        training = {
            "activations": len(acts),
            "collect_s": round(collected - started, 1),
            "train_s": round(time.perf_counter() - collected, 1),
            "losses": [round(x, 4) for x in fit.losses],
            "dead_latents": fit.dead,
        }
        text = json.dumps({**manifest, "files": files, "training": training}, indent=2)
        (building / MANIFEST).write_text(text + "\n", encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(building, folder)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def write_saelens(folder: Path, fit: TopKFit, model_name: str, layer: int, *, context: int) -> None:
    """Save `fit` as SAELens 6 saves a TopK SAE: its config's fields and its four tensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    d_in, d_sae = fit.W_enc.shape
    cfg = {
        "architecture": "topk",
        "d_in": d_in,
        "d_sae": d_sae,
        "k": fit.k,
        "rescale_acts_by_decoder_norm": False,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": model_name,
            "hook_name": f"blocks.{layer}.hook_resid_post",
            "context_size": context,
            "prepend_bos": False,
            "exclude_special_tokens": False,
            "dataset_path": "pydoc_data.topics + actpatch task prompts",
            "trained_by": "actpatch",
        },
    }
    (folder / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    weights = {
        "W_enc": fit.W_enc,
        "b_enc": fit.b_enc,
        "W_dec": fit.W_dec,
        "b_dec": fit.b_dec,
    }
    save_file(
        {n: t.detach().contiguous().to(torch.float32) for n, t in weights.items()},
        str(folder / WEIGHTS),
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
