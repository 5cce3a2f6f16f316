"""The `retention` section: how many artifacts each asset keeps on the artifact root."""

from __future__ import annotations

from pydantic import Field

from engine.recipe.fields import Int, Section


class RetentionSection(Section):
    """Old artifacts are removed per asset, most recently used kept."""
    keep_last: Int = Field(5, ge=1, description="artifacts kept per asset, most recently used first; older ones are "
                                                "removed")
