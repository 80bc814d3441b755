"""A subspace written in MIB's featurizer layout reads back as the same subspace."""

import json

import pytest
import torch

from actpatch import Site
from actpatch.bases.subspace import BasisError, Subspace
from actpatch.subspace.mib import export_featurizer, load_featurizer


def basis(d: int, r: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, r, generator=torch.Generator().manual_seed(1)))[0]


@pytest.mark.parametrize(
    "site, unit",
    [
        (Site("resid_pre", 3, pos="END"), "ResidualStream(Layer-3,Token-last_token)"),
        (Site("head", 9, head=6, pos="END"), "AttentionHead(Layer-9,Head-6,Token-last_token)"),
    ],
)
def test_export_and_load_round_trip(tmp_path, site, unit):
    d = 64 if site.kind == "head" else 32
    subspace = Subspace(site, basis(d, 3))
    base = export_featurizer(
        subspace,
        tmp_path,
        task="ioi",
        model_class="LlamaForCausalLM",
        variable="output_token",
        token="last_token",
    )
    assert base == tmp_path / "ioi_LlamaForCausalLM_output_token" / unit
    for suffix in ("_featurizer", "_inverse_featurizer", "_indices"):
        assert (base.parent / f"{unit}{suffix}").is_file()
    stored = torch.load(f"{base}_featurizer", weights_only=True)
    info = stored["model_info"]
    assert info["featurizer_class"] == "SubspaceFeaturizerModule" and info["n_features"] == 3
    assert set(stored["state_dict"]) == {
        "rotate.parametrizations.weight.original",
        "rotate.parametrizations.weight.0.base",
    }
    torch.testing.assert_close(
        info["additional_config"]["rotation_matrix"], subspace.U, atol=1e-6, rtol=0
    )
    assert json.loads((base.parent / f"{unit}_indices").read_text()) == [0, 1, 2]
    loaded = load_featurizer(base)
    torch.testing.assert_close(loaded.U, subspace.U, atol=1e-6, rtol=0)
    assert loaded.site == Site(site.kind, site.layer, head=site.head, pos="last_token")
    assert load_featurizer(base, site=site).site == site


def test_indices_select_features_and_bad_files_are_refused(tmp_path):
    site = Site("resid_pre", 1, pos="END")
    base = export_featurizer(
        Subspace(site, basis(32, 4)), tmp_path, task="t", model_class="M", variable="v", token="END"
    )
    (base.parent / f"{base.name}_indices").write_text("[1, 3]")
    assert load_featurizer(base).rank == 2
    with pytest.raises(FileNotFoundError, match="no featurizer there"):
        load_featurizer(tmp_path / "nothing")
    with pytest.raises(BasisError, match="model units are the residual stream"):
        export_featurizer(
            Subspace(Site("mlp_out", 1), basis(32, 1)),
            tmp_path,
            task="t",
            model_class="M",
            variable="v",
            token="END",
        )
