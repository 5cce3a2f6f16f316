"""The `schedule` section: when Dagster's retrain schedule runs and how often the incoming-data sensor looks."""

from __future__ import annotations

import zoneinfo
from typing import Annotated

from pydantic import AfterValidator, Field

from engine.recipe.fields import Int, Section


def _timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError('expected an IANA time zone name such as "UTC" or "Europe/Berlin"') from None
    return value


class ScheduleSection(Section):
    """retrain_schedule and incoming_data_sensor (pipelines/automation.py); both start switched off."""
    cron: str = Field("0 3 * * 1", description="when the retrain schedule runs, a 5-field cron string Dagster "
                                               "accepts (switched off at first)")
    timezone: Annotated[str, AfterValidator(_timezone)] = Field("UTC", description="the IANA time zone cron is read "
                                                                                   "in, e.g. Europe/Berlin")
    watch_interval_seconds: Int = Field(60, ge=5, description="seconds between the incoming-data sensor's hashes of "
                                                              "the sources")
