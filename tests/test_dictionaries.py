"""Dictionaries from disk: SAELens, EleutherAI sparsify, Gemma Scope 2 and circuit-tracer folders.

The files are written here by small writers that follow each format's published field list
(SAELens `SAE.save_model`, sparsify `SparseCoder.save_to_disk`, Gemma Scope 2's params.safetensors
and config.json, circuit-tracer's `TranscoderSet.to_safetensors` + config.yaml), not by the
libraries themselves: sae-lens pins transformer-lens < 4 and pulls datasets, nltk and
plotly-express, and eai-sparsify pulls datasets and schedulefree: too heavy for the test extra.
Each loaded dictionary is checked against the format's own formula, written out here apart from
`Dictionary`, on activations of a tiny model, and placed at the site the file names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

import actpatch as ap
from tiny import tiny_model, tiny_pairs

N = 16  # latents


def draw(*shape, seed=0, scale=0.5):
    return (
        torch.randn(
            *shape, generator=torch.Generator().manual_seed(seed + len(shape) * 7 + shape[0])
        )
        * scale
    )


def topk(pre, k):
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values.relu())


# --- writers, one per format -------------------------------------------------------------------


def write_saelens(
    folder: Path,
    architecture: str,
    *,
    d_in=32,
    d_out=32,
    hook="blocks.1.hook_resid_post",
    hook_out=None,
    normalize="none",
    scaling_factor=None,
    legacy=False,
    **cfg_extra,
) -> dict:
    transcoder = "transcoder" in architecture
    weights = {
        "W_enc": draw(d_in, N, seed=1),
        "b_enc": draw(N, seed=2, scale=0.1),
        "W_dec": draw(N, d_out, seed=3),
        "b_dec": draw(d_out, seed=4, scale=0.1),
    }
    if "jumprelu" in architecture:
        weights["threshold"] = draw(N, seed=5, scale=0.2).abs()
    if "skip" in architecture:
        weights["W_skip"] = draw(d_out, d_in, seed=6, scale=0.2)
    if legacy:  # before SAELens 6: flat keys, hook_point, activation_fn_str
        cfg = {
            "d_in": d_in,
            "d_sae": N,
            "hook_point": hook,
            "activation_fn_str": "relu",
            "apply_b_dec_to_input": True,
            "normalize_activations": False,
        }
    else:
        cfg = {
            "architecture": architecture,
            "d_in": d_in,
            "d_sae": N,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": not transcoder,
            "normalize_activations": normalize,
            "reshape_activations": "none",
            "metadata": {"hook_name": hook, "sae_lens_version": "6.5.0", "model_name": "tiny"},
        }
        if transcoder:
            cfg["d_out"] = d_out
            cfg["metadata"]["hook_name_out"] = hook_out
        if architecture == "topk":
            cfg["k"] = 4
    cfg.update(cfg_extra)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    if scaling_factor is not None:
        (folder / "activation_scaler.json").write_text(
            json.dumps({"scaling_factor": scaling_factor})
        )
    return weights


def saelens_formula(w: dict, architecture: str, x, *, scale=1.0, rescale=False):
    """SAELens's encode and decode, as its SAE classes compute them."""
    x = x * scale
    sae_in = x if "transcoder" in architecture else x - w["b_dec"]
    pre = sae_in @ w["W_enc"] + w["b_enc"]
    if architecture == "topk":
        norms = w["W_dec"].norm(dim=-1) if rescale else 1
        acts = topk(pre * norms, 4)
        out = (acts / norms) @ w["W_dec"] + w["b_dec"]
        return acts, out / scale
    acts = pre.relu() * (pre > w["threshold"]) if "jumprelu" in architecture else pre.relu()
    out = acts @ w["W_dec"] + w["b_dec"]
    if "skip" in architecture:
        out = out + x @ w["W_skip"].T
    return acts, out / scale


def write_sparsify(folder: Path, *, d=32, transcode=False, skip=False) -> dict:
    weights = {
        "encoder.weight": draw(N, d, seed=11),
        "encoder.bias": draw(N, seed=12, scale=0.1),
        "W_dec": draw(N, d, seed=13),
        "b_dec": draw(d, seed=14, scale=0.1),
    }
    if skip:
        weights["W_skip"] = draw(d, d, seed=15, scale=0.2)
    cfg = {
        "activation": "topk",
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": N,
        "k": 4,
        "multi_topk": False,
        "skip_connection": skip,
        "transcode": transcode,
        "d_in": d,
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return weights


def sparsify_formula(w: dict, x, *, transcode=False):
    sae_in = x if transcode else x - w["b_dec"]
    acts = topk((sae_in @ w["encoder.weight"].T + w["encoder.bias"]).relu(), 4)
    out = acts @ w["W_dec"] + w["b_dec"]
    if "W_skip" in w:
        out = out + x @ w["W_skip"].T
    return acts, out


def write_gemma_scope(folder: Path, *, d=32, skip=False, config=None) -> dict:
    weights = {
        "w_enc": draw(d, N, seed=21),
        "b_enc": draw(N, seed=22, scale=0.1),
        "w_dec": draw(N, d, seed=23),
        "b_dec": draw(d, seed=24, scale=0.1),
        "threshold": draw(N, seed=25, scale=0.2).abs(),
    }
    if skip:
        weights["affine_skip_connection"] = draw(d, d, seed=26, scale=0.2)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "params.safetensors"))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return weights


def gemma_scope_formula(w: dict, x):
    pre = x @ w["w_enc"] + w["b_enc"]
    acts = pre.relu() * (pre > w["threshold"])
    out = acts @ w["w_dec"] + w["b_dec"]
    if "affine_skip_connection" in w:
        out = out + x @ w["affine_skip_connection"]
    return acts, out


def write_circuit_tracer(
    folder: Path, *, d=32, n_layers=2, skip=False, k=None, config_extra=None
) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    layers = []
    for layer in range(n_layers):
        weights = {
            "W_enc": draw(N, d, seed=31 + layer),
            "W_dec": draw(N, d, seed=41 + layer),
            "b_enc": draw(N, seed=51 + layer, scale=0.1),
            "b_dec": draw(d, seed=61 + layer, scale=0.1),
        }
        if k is None:
            weights["activation_function.threshold"] = draw(N, seed=71 + layer, scale=0.2).abs()
        else:
            weights["k"] = torch.tensor(k)
        if skip:
            weights["W_skip"] = draw(d, d, seed=81 + layer, scale=0.2)
        save_file(weights, str(folder / f"layer_{layer}.safetensors"))
        layers.append(weights)
    config = {
        "model_kind": "transcoder_set",
        "feature_input_hook": "ln2.hook_normalized",
        "feature_output_hook": "hook_mlp_out",
        **(config_extra or {}),
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return layers


def circuit_tracer_formula(w: dict, x):
    pre = x @ w["W_enc"].T + w["b_enc"]
    acts = (
        topk(pre, int(w["k"]))
        if "k" in w
        else pre.relu() * (pre > w["activation_function.threshold"])
    )
    out = acts @ w["W_dec"] + w["b_dec"]
    if "W_skip" in w:
        out = out + x @ w["W_skip"].T
    return acts, out


# --- the checks ----------------------------------------------------------------------------------


def activations(model, kind: str, layer: int = 1):
    site = ap.Site(kind, layer)
    return ap.capture(model, tiny_pairs().clean, [site])[site]


def assert_formula(dictionary, formula, x):
    acts, out = formula(x)
    assert 0 < int((acts != 0).sum()) < acts.numel()  # some latents fire, not all
    assert torch.allclose(dictionary.encode(x), acts, atol=1e-5)
    assert torch.allclose(dictionary.reconstruct(x), out, atol=1e-5)


@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk"])
def test_saelens_saes_encode_and_decode_as_saelens_does(tmp_path, architecture):
    model = tiny_model("llama")
    weights = write_saelens(tmp_path, architecture)
    dictionary = ap.load_dictionary(tmp_path, model)
    assert (dictionary.reads, dictionary.writes, dictionary.layer) == (
        "resid_post",
        "resid_post",
        1,
    )
    assert dictionary.name == "sae.resid_post.1" and dictionary.n_latents == N
    assert_formula(
        dictionary,
        lambda x: saelens_formula(weights, architecture, x),
        activations(model, "resid_post"),
    )


def test_saelens_topk_rescaled_by_decoder_norms_is_folded_exactly(tmp_path):
    model = tiny_model("llama")
    weights = write_saelens(tmp_path, "topk", rescale_acts_by_decoder_norm=True)
    dictionary = ap.load_dictionary(tmp_path, model)
    x = activations(model, "resid_post")
    _, out = saelens_formula(weights, "topk", x, rescale=True)
    assert torch.allclose(dictionary.reconstruct(x), out, atol=1e-5)


@pytest.mark.parametrize(
    "architecture",
    ["transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"],
)
def test_saelens_transcoders_read_the_mlp_input_and_write_its_output(tmp_path, architecture):
    model = tiny_model("qwen2")
    weights = write_saelens(
        tmp_path,
        architecture,
        hook="blocks.1.ln2.hook_normalized",
        hook_out="blocks.1.hook_mlp_out",
    )
    dictionary = ap.load_dictionary(tmp_path, model)
    assert (dictionary.reads, dictionary.writes) == ("mlp_in", "mlp_out")
    assert dictionary.kind == ("skip_transcoder" if "skip" in architecture else "transcoder")
    assert_formula(
        dictionary,
        lambda x: saelens_formula(weights, architecture, x),
        activations(model, "mlp_in"),
    )


def test_saelens_constant_input_scaling_is_folded_into_the_weights(tmp_path):
    model = tiny_model("llama")
    weights = write_saelens(
        tmp_path, "standard", normalize="expected_average_only_in", scaling_factor=2.5
    )
    dictionary = ap.load_dictionary(tmp_path, model)
    assert_formula(
        dictionary,
        lambda x: saelens_formula(weights, "standard", x, scale=2.5),
        activations(model, "resid_post"),
    )


def test_saelens_configs_from_before_version_6_and_hf_hook_names_load(tmp_path):
    model = tiny_model("llama")
    weights = write_saelens(
        tmp_path / "old", "standard", hook="blocks.0.hook_resid_pre", legacy=True
    )
    old = ap.load_dictionary(tmp_path / "old", model)
    assert (old.reads, old.layer) == ("resid_pre", 0)
    assert_formula(
        old, lambda x: saelens_formula(weights, "standard", x), activations(model, "resid_pre", 0)
    )
    write_saelens(
        tmp_path / "hf", "standard", hook=None, metadata={"hf_hook_name": "model.layers.1.mlp"}
    )
    assert ap.load_dictionary(tmp_path / "hf", model).reads == "mlp_out"


@pytest.mark.parametrize(
    "family, folder, kind",
    [
        ("llama", "layers.1", "resid_post"),
        ("gpt2", "h.1", "resid_post"),
        ("llama", "model.layers.0.mlp", "mlp_out"),
        ("gpt_neox", "layers.1.attention", "attn_out"),
    ],
)
def test_sparsify_saes_are_placed_by_their_module_path(tmp_path, family, folder, kind):
    model = tiny_model(family)
    weights = write_sparsify(tmp_path / folder)
    dictionary = ap.load_dictionary(tmp_path / folder, model)
    assert (dictionary.reads, dictionary.writes) == (kind, kind)
    assert_formula(
        dictionary,
        lambda x: sparsify_formula(weights, x),
        activations(model, kind, dictionary.layer),
    )


@pytest.mark.parametrize("skip", [False, True])
def test_sparsify_transcoders_read_their_modules_input_and_write_its_output(tmp_path, skip):
    model = tiny_model("llama")
    weights = write_sparsify(tmp_path / "layers.1.mlp", transcode=True, skip=skip)
    dictionary = ap.load_dictionary(tmp_path / "layers.1.mlp", model)
    assert (dictionary.reads, dictionary.writes, dictionary.kind) == (
        "mlp_in",
        "mlp_out",
        "skip_transcoder" if skip else "transcoder",
    )
    assert_formula(
        dictionary,
        lambda x: sparsify_formula(weights, x, transcode=True),
        activations(model, "mlp_in"),
    )


def test_gemma_scope_2_folders_by_release_name_and_by_config(tmp_path):
    model = tiny_model("gemma3")
    sae_folder = tmp_path / "resid_post" / "layer_1_width_16k_l0_small"
    weights = write_gemma_scope(sae_folder)
    sae = ap.load_dictionary(sae_folder, model)
    assert (sae.reads, sae.writes, sae.layer) == ("resid_post", "resid_post", 1)
    assert_formula(sae, lambda x: gemma_scope_formula(weights, x), activations(model, "resid_post"))
    config = {
        "architecture": "jump_relu",
        "hf_hook_point_in": "model.layers.1.pre_feedforward_layernorm.output",
        "hf_hook_point_out": "model.layers.1.post_feedforward_layernorm.output",
        "affine_connection": True,
    }
    tc_folder = tmp_path / "transcoder_all" / "layer_1_width_16k_l0_small_affine"
    weights = write_gemma_scope(tc_folder, skip=True, config=config)
    transcoder = ap.load_dictionary(tc_folder, model)
    assert (transcoder.reads, transcoder.writes, transcoder.kind) == (
        "mlp_in",
        "mlp_out",
        "skip_transcoder",
    )
    assert_formula(
        transcoder, lambda x: gemma_scope_formula(weights, x), activations(model, "mlp_in")
    )


@pytest.mark.parametrize("k", [None, 3])
def test_circuit_tracer_sets_give_one_transcoder_per_layer(tmp_path, k):
    model = tiny_model("mistral")
    layers = write_circuit_tracer(tmp_path, skip=True, k=k)
    for layer in (0, 1):
        transcoder = ap.load_dictionary(tmp_path, model, layer=layer)
        assert (transcoder.reads, transcoder.writes, transcoder.layer) == (
            "mlp_in",
            "mlp_out",
            layer,
        )
        assert_formula(
            transcoder,
            lambda x, weights=layers[layer]: circuit_tracer_formula(weights, x),
            activations(model, "mlp_in", layer),
        )


def test_a_loaded_transcoder_patched_in_whole_is_the_plain_patch(tmp_path):
    model = tiny_model("llama")
    write_saelens(
        tmp_path,
        "skip_transcoder",
        hook="blocks.1.hook_resid_mid",
        hook_out="blocks.1.hook_mlp_out",
    )
    transcoder = ap.load_dictionary(tmp_path, model)
    pairs = tiny_pairs()
    sites = [ap.Site("feature", 1, latent=i, basis=transcoder, pos=5) for i in range(N)]
    sites.append(ap.Site("feature_error", 1, basis=transcoder, pos=5))
    read, written = ap.Site("resid_mid", 1, pos=5), ap.Site("mlp_out", 1, pos=5)
    clean, corrupt = (
        ap.capture(model, tokens, [read, written]) for tokens in (pairs.clean, pairs.corrupt)
    )
    with ap.patch(model, ap.capture(model, pairs.clean, sites)):
        got = model.last_logits(pairs.corrupt)
    skip_change = (
        clean[read] - corrupt[read]
    ) @ transcoder.W_skip  # the skip path stays at the target's
    with ap.patch(model, {written: clean[written] - skip_change}):
        want = model.last_logits(pairs.corrupt)
    assert (got - want).abs().max() <= 1e-5


# --- bad inputs ---------------------------------------------------------------------------------


def pickled(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text("{}")
    (folder / "sae_weights.pt").write_bytes(b"\x80\x04not really")


def truncated(folder: Path) -> None:
    write_saelens(folder, "standard")
    data = (folder / "sae_weights.safetensors").read_bytes()
    (folder / "sae_weights.safetensors").write_bytes(data[: len(data) // 2])


BAD = [
    (
        "llama",
        lambda f: write_saelens(f, "standard", d_in=48, d_out=48),
        {},
        r"48-wide.*32 wide \(d_model\).*another model",
    ),
    (
        "llama",
        lambda f: write_saelens(f, "standard", hook="blocks.5.hook_resid_post"),
        {},
        r"layer 5.*layers 0\.\.1",
    ),
    (
        "pythia_parallel",
        lambda f: write_saelens(f, "standard", hook="blocks.1.hook_resid_mid"),
        {},
        r"in parallel",
    ),
    ("llama", pickled, {}, r"pickle files \(sae_weights\.pt\).*safetensors only"),
    (
        "llama",
        lambda f: write_saelens(f, "gated"),
        {},
        r"architecture 'gated' is not supported.*standard",
    ),
    (
        "llama",
        lambda f: write_saelens(f, "standard", normalize="constant_norm_rescale"),
        {},
        r"normalize_activations='constant_norm_rescale'",
    ),
    (
        "llama",
        lambda f: write_saelens(f, "standard", normalize="layer_norm"),
        {},
        r"'layer_norm'.*supported",
    ),
    (
        "llama",
        lambda f: write_saelens(f, "standard", hook="blocks.1.attn.hook_z"),
        {},
        r"head site",
    ),
    ("llama", lambda f: write_saelens(f, "standard", reshape_activations="hook_z"), {}, r"hook_z"),
    (
        "llama",
        lambda f: write_saelens(f, "standard", hook="blocks.1.hook_nonsense"),
        {},
        r"hook_nonsense.*supported",
    ),
    ("llama", truncated, {}, r"not a readable safetensors file"),
    (
        "llama",
        lambda f: f.mkdir(),
        {},
        r"not a dictionary folder.*saelens.*sparsify.*gemma_scope.*circuit_tracer",
    ),
    ("llama", lambda f: write_saelens(f, "standard"), {"layer": 1}, r"layer= picks one transcoder"),
    (
        None,
        lambda f: write_sparsify(f / "layers.1"),
        {"sub": "layers.1"},
        r"load_dictionary\(path, model\)",
    ),
    (
        "gemma3",
        lambda f: write_sparsify(f / "layers.1.mlp", transcode=True),
        {"sub": "layers.1.mlp"},
        r"output of module 'layers\.1\.mlp' is not a site.*post_feedforward_layernorm",
    ),
    (
        "llama",
        lambda f: write_sparsify(f / "layers.9"),
        {"sub": "layers.9"},
        r"layer 9.*layers 0\.\.1",
    ),
    (
        "llama",
        lambda f: write_circuit_tracer(f),
        {},
        r"transcoder set of layers \[0, 1\]: pass layer=",
    ),
    ("llama", lambda f: write_circuit_tracer(f), {"layer": 4}, r"no transcoder for layer 4"),
    (
        "llama",
        lambda f: write_circuit_tracer(f, config_extra={"model_kind": "cross_layer_transcoder"}),
        {},
        r"cross_layer_transcoder.*not supported",
    ),
    (
        "llama",
        lambda f: write_circuit_tracer(
            f, config_extra={"transcoders": ["hf://a/b/layer_0.safetensors"]}
        ),
        {"layer": 0},
        r"nothing is downloaded",
    ),
    (
        "gemma3",
        lambda f: write_gemma_scope(f / "attn_out" / "layer_1_width_16k"),
        {"sub": "attn_out/layer_1_width_16k"},
        r"per-head z",
    ),
    (
        "llama",
        lambda f: (
            f.mkdir(),
            save_file({"W_enc": torch.zeros(32, 4)}, str(f / "sae_weights.safetensors")),
            (f / "cfg.json").write_text(json.dumps({"architecture": "standard"})),
        ),
        {},
        r"lacks the tensors \['b_enc', 'W_dec', 'b_dec'\]",
    ),
]


@pytest.mark.parametrize("family, write, options, message", BAD)
def test_bad_dictionaries_are_refused_with_the_fix(tmp_path, family, write, options, message):
    folder = tmp_path / "dictionary"
    write(folder)
    options = dict(options)
    path = folder / options.pop("sub") if "sub" in options else folder
    model = tiny_model(family) if family else None
    with pytest.raises(ap.DictionaryError, match=message):
        ap.load_dictionary(path, model, **options)
