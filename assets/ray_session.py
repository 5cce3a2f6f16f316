"""clean_data's Ray connection when the recipe says data.engine: ray: opened through dagster-ray, with Ray Data's
progress and log lines in the run's log."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import dagster as dg

from engine.data.ray_engine import require_ray
from engine.recipe import Recipe
from engine.runtime.pool import usable_cores

RAY_LOGGERS = ("ray.data", "ray")  # Ray Data's progress ("Running Dataset ...", per operator counts) and Ray's own


@contextlib.contextmanager
def ray_session(context: dg.AssetExecutionContext, recipe: Recipe) -> Iterator[None]:
    """Inside, this process is a Ray driver attached to data.ray_address (unset: a local Ray with the cores this
    process may use, stopped on the way out), and Ray's log lines reach the run's log; nothing where data.engine is
    local."""
    if recipe.data.engine != "ray":
        yield
        return
    require_ray()  # one line naming data.engine and the extra, before dagster_ray imports ray
    # in process, as every data stage runs (assets/stage_asset.py): dagster-ray's RayResource connects this process
    # as the driver and the engine's Ray Data calls run from here; PipesRayJobClient would need a job server on the
    # cluster and this repository shipped to it as a runtime_env, for a stage whose work already runs on the cluster
    resource = ray_resource(recipe.data.ray_address)
    handler = _RunLog(context)
    loggers = [logging.getLogger(name) for name in RAY_LOGGERS]
    with resource.yield_for_execution(context):  # type: ignore[arg-type]  # it reads the context's log alone
        for logger in loggers:
            logger.addHandler(handler)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeHandler(handler)


def ray_resource(address: str | None):
    from dagster_ray import LocalRay
    from dagster_ray.configs import RayDataExecutionOptions
    pyarrow_sort = RayDataExecutionOptions(use_polars=False)  # dagster-ray's default sorts with polars: not installed

    class RayCluster(LocalRay):
        """dagster-ray's connection to a running cluster at `address` (LocalRay always starts its own)."""
        address: str

        @property
        def ray_address(self) -> str:  # type: ignore[override]
            return self.address

        @property
        def name(self) -> str:
            return f"Ray cluster {self.address}"

    if address:
        return RayCluster(address=address, data_execution_options=pyarrow_sort)
    return LocalRay(ray_init_options={"num_cpus": usable_cores(), "include_dashboard": False},
                    data_execution_options=pyarrow_sort)


class _RunLog(logging.Handler):
    def __init__(self, context: dg.AssetExecutionContext):
        super().__init__(logging.INFO)
        self.context = context

    def emit(self, record: logging.LogRecord) -> None:
        self.context.log.log(record.levelno, f"ray: {record.getMessage()}")
