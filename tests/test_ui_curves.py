"""What the Dagster UI shows of a stage's numbers: the pictures in place on the asset page (no click), and the live
training points as the asset's observations. One `dagster dev` (tests/test_ui.py's fixture) and one run of the
stages up to sft_adapter, launched through the webserver."""

import json

import pytest

from tests.browser import Browser
from tests.test_ui import PAGE_S, finished_status, graphql, launch, webserver  # noqa: F401 (a fixture)

UP_TO_SFT = ["base_model", "raw_data", "clean_data", "formatted_data", "pt_model", "sft_adapter"]
STEPS = 6


@pytest.fixture(scope="module")
def trained(webserver):  # noqa: F811 (the imported fixture)
    """sft_adapter and its parents materialized through the webserver (6 steps, a point each); the run's status."""
    url, _, server = webserver
    run_id = launch(url, UP_TO_SFT, {"sft.max_steps": STEPS, "sft.logging_steps": 1, "sft.num_train_epochs": 1})
    return finished_status(url, server, run_id)


def inline_picture(name: str) -> str:
    """A page expression: the picture `name` rendered in place (an <img> decoded from its SVG data URI, no dialog
    open), as {width, alt}; null until then."""
    return f"""(() => {{ if (document.querySelector('[role="dialog"]')) return null;
        const i = [...document.querySelectorAll('img')].find(i => i.alt === {json.dumps(name)}
            && i.src.startsWith('data:image/svg+xml,'));
        return i && i.complete && i.naturalWidth > 0 ? {{width: i.naturalWidth, alt: i.alt}} : null; }})()"""


@pytest.mark.parametrize("asset, picture", [("sft_adapter", "loss_curve"), ("clean_data", "quarantine_reasons"),
                                            ("formatted_data", "token_lengths")])
def test_the_asset_page_shows_its_picture_without_a_click(webserver, trained, asset, picture, tmp_path):  # noqa: F811
    url, _, _ = webserver
    assert trained == "SUCCESS"
    browser = Browser(tmp_path / "profile")
    try:
        browser.goto(f"{url}/assets/{asset}")
        shown = browser.wait_for(inline_picture(picture), PAGE_S, f"the {picture} picture in place on {asset}'s page")
        assert shown == {"width": 320, "alt": picture}
        browser.screenshot(tmp_path / f"{asset}.png")
    finally:
        browser.close()


def test_the_training_points_are_the_assets_observations(webserver, trained):  # noqa: F811
    """What the asset's Plots and Events tabs read: observations with numeric train/loss, one per logged step."""
    url, _, _ = webserver
    assert trained == "SUCCESS"
    answer = graphql(url, """{ assetOrError(assetKey: {path: ["sft_adapter"]}) { ... on Asset {
        assetObservations { timestamp metadataEntries { label ... on FloatMetadataEntry { floatValue }
                                                        ... on IntMetadataEntry { intValue } } } } } }""")
    observations = answer["data"]["assetOrError"]["assetObservations"]
    points = [{e["label"]: e.get("floatValue", e.get("intValue")) for e in o["metadataEntries"]} for o in observations]
    steps = sorted(p["step"] for p in points if "train/loss" in p)
    assert steps[0] == 1 and steps[-1] == STEPS
    assert all(p["train/loss"] > 0 and p["train/learning_rate"] > 0 for p in points if "train/loss" in p)


CLICK_PLOTS = """(() => { const b = [...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Plots');
    if (b) { b.click(); return true; } return false; })()"""
CURVES = ["train/loss", "train/learning_rate", "train/tokens_per_second", "eval/loss"]


def test_the_plots_view_draws_the_training_curves(webserver, trained, tmp_path):  # noqa: F811
    """The asset page's Metadata > Plots draws a curve per point key (from the observations), beside the
    materialization's numbers."""
    url, _, _ = webserver
    assert trained == "SUCCESS"
    browser = Browser(tmp_path / "profile")
    try:
        browser.goto(f"{url}/assets/sft_adapter")
        browser.wait_for(CLICK_PLOTS, PAGE_S, "the Plots toggle of sft_adapter's metadata")
        browser.wait_for(f"""(() => {{ const t = document.body.innerText;
            return {json.dumps(CURVES)}.every(n => t.includes(n)) && document.querySelectorAll('canvas').length >= 4; }})()""",
                         PAGE_S, f"a plot of each of {CURVES}")
        browser.screenshot(tmp_path / "plots.png")
    finally:
        browser.close()
