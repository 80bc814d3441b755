"""Path patching against the reference engine and against the algorithm written out by hand."""

import numpy as np
import pytest
import torch
import xarray as xr

import actpatch as ap
from actpatch import hooks
from actpatch.engine import paths
from actpatch.sites import SiteError
from tiny import FAMILIES, tiny_model, tiny_pairs, tiny_task, with_answers

# Senders that reach the final position: a first-layer head and MLP, a head at the last position
# only, and a last-layer head (whose only receivers are its own layer's MLP and the logits).
SENDERS = [
    ap.Site("head", 0, head=1),
    ap.Site("mlp_out", 0),
    ap.Site("head", 0, head=3, pos=5),
    ap.Site("head", 1, head=2),
]
# Families whose heads add their outputs straight into the residual stream (Gemma 3 normalises
# the sum of its heads first, so one head's share of the residual stream is not defined).
ADDITIVE_HEADS = [f for f in FAMILIES if f != "gemma3"]


def direct_patch(model, pairs, sender, direction):
    """The sender patched outright, by the reference engine."""
    options = dict(
        layers=[sender.layer],
        positions="all" if sender.pos is None else [sender.pos],
        engine="reference",
    )
    if sender.kind == "head":
        options["heads"] = [sender.head]
    return ap.sweep(model, pairs, sender.kind, direction=direction, **options).squeeze(drop=True)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("family", FAMILIES)
def test_paths_to_every_receiver_are_the_sender_patched_outright(family, direction):
    model, pairs = tiny_task(family)
    for sender in SENDERS:
        want = direct_patch(model, pairs, sender, direction)
        got = ap.patch_paths(
            model, pairs, sender, ap.all_receivers(model, sender), direction=direction
        )
        np.testing.assert_allclose(
            got.values, want.values, atol=1e-5, rtol=1e-5, err_msg=str(sender)
        )
        untouched = 0.0 if direction == "denoise" else 1.0
        assert abs(got.sel(metric="norm_logit_diff").item() - untouched) > 1e-3, (
            f"{sender} moved nothing: a vacuous check"
        )
    assert ap.attached_hooks(model) == 0


def noise_pairs(model):
    """A Gaussian-noise corruption of tiny pairs, with answers the noisy run moves most."""
    pairs = ap.gaussian_noise(model, tiny_pairs(), [1, 3])
    return with_answers(model, pairs)[1]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_noise_corruption_reaches_every_run_of_a_path_patch(family):
    model = tiny_model(family)
    pairs = noise_pairs(model)
    for direction in ("denoise", "noise"):
        sender = ap.Site("head", 0, head=1)
        want = direct_patch(model, pairs, sender, direction)
        got = ap.patch_paths(
            model, pairs, sender, ap.all_receivers(model, sender), direction=direction
        )
        np.testing.assert_allclose(got.values, want.values, atol=1e-5, rtol=1e-5)
        assert (
            abs(got.sel(metric="norm_logit_diff").item() - (0.0 if direction == "denoise" else 1.0))
            > 1e-3
        )


def test_every_receiver_means_every_later_input_the_mlps_and_the_logits():
    model = tiny_model("llama")  # 2 layers, 4 heads, 2 KV heads
    receivers = ap.all_receivers(model, ap.Site("head", 0, head=0))
    assert receivers == [ap.Site("mlp_out", 0)] + [ap.Site("q", 1, head=h) for h in range(4)] + [
        ap.Site("k", 1, head=0),
        ap.Site("k", 1, head=1),
        ap.Site("v", 1, head=0),
        ap.Site("v", 1, head=1),
        ap.Site("mlp_out", 1),
        "logits",
    ]
    parallel = ap.all_receivers(tiny_model("pythia_parallel"), ap.Site("head", 0, head=0))
    assert ap.Site("mlp_out", 0) not in parallel  # its MLP reads resid_pre, beside the attention


def by_hand_direct_effect(model, pairs, sender):
    """Unembed(target final residual − sender's target output + its source output), at the last position."""
    whole = ap.Site(sender.kind, sender.layer, head=sender.head)
    final = ap.Site("resid_post", model.dims.n_layers - 1)
    source = hooks.capture(model, pairs.clean, [whole])[whole]
    target = hooks.capture(model, pairs.corrupt, [whole, final])
    if sender.kind == "head":
        d_head, o_proj = model.dims.d_head, model.submodule(sender.layer, model.arch.o_proj)

        def output(
            z,
        ):  # this head's share of the attention output: o_proj of its z alone, less the bias
            alone = torch.zeros(*z.shape[:2], model.dims.n_heads * d_head)
            alone[..., sender.head * d_head : (sender.head + 1) * d_head] = z
            return o_proj(alone) - o_proj(torch.zeros_like(alone))

        change = output(source) - output(target[whole])
    else:
        change = source - target[whole]
    if sender.pos is not None:
        change[:, [p for p in range(pairs.seq_len) if p != sender.pos]] = 0
    return model.unembed((target[final] + change)[:, -1])


@pytest.mark.parametrize("family", FAMILIES)
def test_the_path_to_the_logits_is_the_direct_effect_by_hand(family):
    model, pairs = tiny_task(family)
    senders = [s for s in SENDERS if s.kind == "mlp_out" or family in ADDITIVE_HEADS]
    base = ap.Baseline(
        model.last_logits(pairs.clean), model.last_logits(pairs.corrupt), pairs.answers, pairs.wrong
    )
    for sender in senders:
        want = ap.metrics.averaged(by_hand_direct_effect(model, pairs, sender), base)
        got = ap.patch_paths(model, pairs, sender, ["logits"])
        for metric in ("logit_diff", "norm_logit_diff", "prob"):
            assert got.sel(metric=metric).item() == pytest.approx(want[metric], abs=1e-5), (
                sender,
                metric,
            )
        total = direct_patch(model, pairs, sender, "denoise").sel(metric="logit_diff").item()
        if (
            sender.layer == 0
        ):  # a first-layer sender also acts through the second layer: direct ≠ total
            assert abs(got.sel(metric="logit_diff").item() - total) > 1e-3


def two_run_algorithm(model, pairs, sender, receivers):
    """Wang et al.'s path patching for receivers that do not read one another, in plain hooks:
    run 1 freezes every head and MLP but the sender and records the receivers; run 2 patches them."""
    dims = model.dims
    frozen = [ap.Site("head", l, head=h) for l in range(dims.n_layers) for h in range(dims.n_heads)]
    frozen += [ap.Site("mlp_out", l) for l in range(dims.n_layers)]
    target = hooks.capture(model, pairs.corrupt, frozen)
    source = hooks.capture(model, pairs.clean, [sender])
    with hooks.patch(model, {**{s: target[s] for s in frozen}, sender: source[sender]}):
        recorded = hooks.capture(model, pairs.corrupt, receivers)
    with hooks.patch(model, recorded):
        return model.last_logits(pairs.corrupt)


@pytest.mark.parametrize("family", FAMILIES)
def test_receivers_in_one_layer_follow_the_two_run_algorithm(family):
    model, pairs = tiny_task(family)
    sender = ap.Site("head", 0, head=2)
    dims = model.dims
    for receivers in (
        [ap.Site("q", 1, head=h) for h in (0, 3)],
        [ap.Site("k", 1, head=dims.n_kv_heads - 1)],
        [ap.Site("v", 1, head=0), ap.Site("q", 1, head=1)],
    ):
        base = ap.Baseline(
            model.last_logits(pairs.clean),
            model.last_logits(pairs.corrupt),
            pairs.answers,
            pairs.wrong,
        )
        want = ap.metrics.averaged(two_run_algorithm(model, pairs, sender, receivers), base)[
            "logit_diff"
        ]
        got = ap.patch_paths(model, pairs, sender, receivers).sel(metric="logit_diff").item()
        assert got == pytest.approx(want, abs=1e-5), receivers
        assert abs(got - ap.metrics.averaged(base.corrupt_logits, base)["logit_diff"]) > 1e-4


def test_receivers_at_a_position_patch_only_there():
    model, pairs = tiny_task("llama")
    sender = ap.Site("head", 0, head=2)
    everywhere = ap.patch_paths(model, pairs, sender, [ap.Site("q", 1, head=h) for h in range(4)])
    at_end = ap.patch_paths(
        model, pairs, sender, [ap.Site("q", 1, head=h, pos="END") for h in range(4)]
    )
    elsewhere = ap.patch_paths(
        model, pairs, sender, [ap.Site("q", 1, head=h, pos=p) for h in range(4) for p in range(5)]
    )
    # Queries act at their own position only, and only the final position is unembedded.
    xr.testing.assert_allclose(at_end, everywhere, atol=1e-6)
    np.testing.assert_allclose(
        elsewhere.sel(metric="logit_diff").item(),
        everywhere.attrs["baseline_corrupt"]["logit_diff"],
        atol=1e-5,
    )


@pytest.mark.parametrize("family", ["llama", "pythia_parallel"])
def test_a_path_sweep_matches_one_path_patch_at_a_time(family):
    model, pairs = tiny_task(family)
    for receivers in (["logits"], [ap.Site("q", 1, head=0), ap.Site("mlp_out", 1)]):
        for site, positions in (("head", "all"), ("head", ["END", 2]), ("mlp_out", "all")):
            swept = ap.sweep_paths(
                model, pairs, receivers, site=site, positions=positions, direction="noise"
            )
            for layer in swept["layer"].values:
                for unit in swept["head"].values if "head" in swept.dims else [None]:
                    for pos in swept["pos"].values if "pos" in swept.dims else [None]:
                        pos = (
                            None if pos is None else (int(pos) if str(pos).isdigit() else str(pos))
                        )
                        sender = ap.Site(
                            site, int(layer), head=None if unit is None else int(unit), pos=pos
                        )
                        where = dict(
                            layer=layer,
                            **({"head": unit} if unit is not None else {}),
                            **({"pos": str(pos)} if pos is not None else {}),
                        )
                        got = swept.sel(**where)
                        reached = [
                            r
                            for r in receivers
                            if paths.read_stage(model, r) > paths.write_stage(model, sender)
                        ]
                        if not reached:
                            assert np.isnan(got.values).all()
                            continue
                        want = ap.patch_paths(model, pairs, sender, reached, direction="noise")
                        np.testing.assert_allclose(
                            got.values, want.values, atol=1e-6, err_msg=str(sender)
                        )
    assert swept.attrs["engine"] == "paths"


BAD = [
    (
        lambda m, p: ap.patch_paths(m, p, ap.Site("head", 1, head=1), [ap.Site("q", 1, head=0)]),
        "no path reaches them",
    ),
    (
        lambda m, p: ap.patch_paths(m, p, ap.Site("head", 1, head=0), [ap.Site("mlp_out", 0)]),
        "no path reaches them",
    ),
    (lambda m, p: ap.patch_paths(m, p, ap.Site("resid_pre", 0), ["logits"]), "a sender is a head"),
    (
        lambda m, p: ap.patch_paths(
            m, p, ap.Site("head", 0, head=0), [ap.Site("pattern", 1, head=0)]
        ),
        "a receiver is a head's input",
    ),
    (lambda m, p: ap.patch_paths(m, p, ap.Site("head", 0, head=0), []), "no receivers given"),
    (
        lambda m, p: ap.patch_paths(m, p, ap.Site("head", 0, head=9), ["logits"]),
        "head 9 is out of range",
    ),
    (
        lambda m, p: ap.patch_paths(
            m, p, [ap.Site("head", 0, head=0), ap.Site("mlp_out", 1)], [ap.Site("mlp_out", 1)]
        ),
        "both a sender and a receiver",
    ),
    (
        lambda m, p: ap.patch_paths(m, p, ap.Site("head", 0, head=0), ["logits"], direction="both"),
        "direction must be one of",
    ),
    (lambda m, p: ap.sweep_paths(m, p, ["logits"], site="resid_pre"), "path patching sends from"),
]


@pytest.mark.parametrize("call, message", BAD)
def test_bad_path_patches_are_named(call, message):
    model, pairs = tiny_task("llama")
    with pytest.raises((SiteError, ValueError), match=message):
        call(model, pairs)
    assert ap.attached_hooks(model) == 0


def test_an_error_inside_a_path_patch_leaves_no_hooks(monkeypatch):
    model, pairs = tiny_task("qwen2")

    def explode(model, run):
        raise RuntimeError("boom")

    monkeypatch.setattr(hooks, "last_logits", explode)
    with pytest.raises(RuntimeError, match="boom"):
        ap.patch_paths(
            model,
            pairs,
            ap.Site("head", 0, head=1),
            ap.all_receivers(model, ap.Site("head", 0, head=1)),
        )
    assert ap.attached_hooks(model) == 0
