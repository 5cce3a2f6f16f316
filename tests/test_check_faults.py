"""Every asset check is proven to fail: a fault planted in a copy of a good artifact fails that check, and only
that one, with a detail line naming what is wrong. A check without a fault here fails the coverage test."""

from __future__ import annotations

import re

import dagster as dg
import pytest

from assets.stage_asset import DECLARED_CHECKS, DECLARED_ELSEWHERE
from engine.recipe import load_recipe
from engine.store.artifacts import ArtifactStore
from engine.store.digests import FILES_INTACT
from pipelines.definitions import ASSETS, resources
from tests.faults import copy_artifact
from tests.faults_data import FAULTS as DATA_FAULTS
from tests.faults_models import FAULTS as MODEL_FAULTS
from tests.faults_serving import FAULTS as SERVING_FAULTS
from tests.faults_store import ENGINE_CHECKS, FAULTS as STORE_FAULTS

FAULTS = {**DATA_FAULTS, **MODEL_FAULTS, **SERVING_FAULTS, **STORE_FAULTS}


# a check may have several faults (a tuple): each fails it alone
CASES = [(key, n) for key, faults in FAULTS.items() for n in range(len(faults) if isinstance(faults, tuple) else 1)]


def checks_of(asset: str) -> dict:
    """Every check judged on `asset`'s artifacts: its declared ones and those declared only where this machine
    could run them (loads_in_vllm: all of them, whatever this machine can run), and the engine's own
    (files_intact)."""
    return {**DECLARED_CHECKS[asset], **DECLARED_ELSEWHERE.get(asset, {}), **ENGINE_CHECKS}


@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory):
    """The tiny recipe's whole graph built once: asset -> its artifact, and the recipe."""
    root = tmp_path_factory.mktemp("faults") / "tuneline"
    with dg.instance_for_test() as instance:
        result = dg.materialize(ASSETS, resources=resources("tiny", str(root)), instance=instance)
    store = ArtifactStore(root / "artifacts")
    built = {}
    for event in result.get_asset_materialization_events():
        meta = event.materialization.metadata
        built[event.asset_key.to_user_string()] = store.find(meta["path"].value)
    return built, load_recipe("tiny")[0]


def test_every_check_has_a_fault():
    declared = {(asset, name) for declared in (DECLARED_CHECKS, DECLARED_ELSEWHERE)
                for asset, checks in declared.items() for name in checks}
    declared |= {(asset.key.to_user_string(), key.name) for asset in ASSETS for key in asset.check_keys}
    declared |= {("*", name) for name in ENGINE_CHECKS}
    assert sorted(declared - set(FAULTS)) == [], "checks without a planted fault"
    assert sorted(set(FAULTS) - declared) == [], "faults of checks that no longer exist"


@pytest.mark.parametrize("key, n", sorted(CASES), ids=[".".join(k) + (f"#{n}" if n else "") for k, n in sorted(CASES)])
def test_the_fault_fails_its_check_and_only_it(key, n, tiny_graph, tmp_path):
    asset, check = key
    fault = FAULTS[key][n] if isinstance(FAULTS[key], tuple) else FAULTS[key]
    built, recipe = tiny_graph
    target = fault_target(asset)
    good = copy_artifact(built[target], tmp_path / "good")
    if fault.good:
        good, recipe = fault.good(good, recipe)
    checks = checks_of(target)
    # None: not evaluated (what the check judges is off under this recipe), which is not a failure
    failing = {name: verdict[1] for name, verdict in judge(checks, good, recipe).items() if verdict[0] is False}
    assert failing == {}, f"the good {target} artifact already fails"
    bad, bad_recipe = fault.plant(copy_artifact(good, tmp_path / "bad"), recipe)
    verdicts = judge(checks, bad, bad_recipe)
    failed = sorted(name for name, verdict in verdicts.items() if verdict[0] is False)
    assert failed == [check], {name: verdicts[name][1] for name in failed}
    assert re.search(fault.detail, verdicts[check][1]), verdicts[check][1]


def fault_target(asset: str) -> str:
    """The asset a fault is planted in ("*": an engine check of every artifact, shown on sft_adapter's)."""
    return "sft_adapter" if asset == "*" else asset


def judge(checks: dict, artifact, recipe) -> dict[str, tuple[bool, str]]:
    return {name: tuple(check(artifact, recipe)[:2]) for name, check in checks.items()}
