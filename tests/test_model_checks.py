"""`check_model` (what `actpatch check` runs): every check passes on every family of the table,
and each check fails when what it guards is broken."""

from __future__ import annotations

import dataclasses

import pytest

from actpatch.model_checks import check_model
from actpatch.sites import SITE_KINDS
from tiny import FAMILIES, tiny_model, tiny_pairs


@pytest.mark.parametrize("family", FAMILIES)
def test_every_check_passes_on_every_family(family):
    model = tiny_model(family)
    checks = check_model(model, tiny_pairs(), progress=False)
    assert [c for c in checks if not c.passed] == []
    names = [c.name for c in checks]
    kinds = len(SITE_KINDS) - (family == "pythia_parallel")  # no resid_mid on a parallel model
    assert sum(n.startswith("no-op patch") for n in names) == 2 * kinds  # both engines
    assert sum(n.startswith("full patch") for n in names) == 2
    assert any(n.startswith("head sum") for n in names) and names[-1] == "hooks removed afterwards"


def test_head_sum_fails_when_the_table_names_the_wrong_projection():
    model = tiny_model("llama")
    # q_proj has o_proj's shapes here (d_model = heads × d_head), so only the sum can tell them apart.
    wrong = dataclasses.replace(
        model, arch=dataclasses.replace(model.arch, o_proj="self_attn.q_proj")
    )
    head_sum = next(
        c for c in check_model(wrong, tiny_pairs(), progress=False) if c.name.startswith("head sum")
    )
    assert not head_sum.passed and head_sum.error > 1e-2 and "self_attn.q_proj" in head_sum.name


def test_a_hook_left_behind_fails_the_last_check(monkeypatch):
    model = tiny_model("qwen2")
    from actpatch import model_checks

    counts = iter([0, 1])  # before and after: one more hook than when the checks began
    monkeypatch.setattr(model_checks.hooks, "attached_hooks", lambda m: next(counts))
    last = check_model(model, tiny_pairs(), progress=False)[-1]
    assert not last.passed and last.detail == "1 hooks left attached"
