"""A multi-node training stage (launcher.type kubernetes, nnodes > 1) as a Kubeflow TrainJob, through a Pipes
client of our own: Dagster's open_pipes_session with the context in the environment of every pod, and dagster-k8s'
pod-log message reader on the pod of node rank 0 (whose rank 0 alone reports). The TrainJob (engine/cluster/
trainjob.py) is created, waited on through its status conditions within launcher.kubernetes.wait_timeout, and deleted
whatever happens. dagster-k8s' PipesK8sClient runs one pod; nothing in it creates custom objects."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Callable

import dagster as dg

from assets.kubernetes import TRAIN_PROCESS
from engine.cluster.trainjob import GROUP, PLURAL, VERSION, finished, rank_zero_selector, trainjob, trainjob_name
from engine.errors import TunelineError
from engine.train.launch import launch_command, training_environment

LOG_DRAIN_SECONDS = 60  # after the job ended: how long rank 0's log may take to arrive before the stage goes on
STARTED = ("Running", "Succeeded", "Failed")  # pod phases whose log can be read


class TrainJobFailed(TunelineError):
    """The TrainJob failed, or ran past launcher.kubernetes.wait_timeout (it is deleted either way)."""


class PipesTrainJobClient(dg.PipesClient):
    """Submit a TrainJob, stream rank 0's log and messages into the run, wait for it, delete it."""

    def __init__(self, custom_api=None, core_api=None, poll_interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self._custom, self._core = custom_api, core_api
        self.poll_interval, self.clock = poll_interval, clock

    def _apis(self):
        if self._custom is None or self._core is None:
            import kubernetes
            from dagster_k8s.client import DagsterKubernetesClient
            from dagster_k8s.pipes import PipesK8sClient
            PipesK8sClient()._load_k8s_config()  # in-cluster config, else the kubeconfig, as the single pod's client
            self._custom = self._custom or kubernetes.client.CustomObjectsApi()
            self._core = self._core or DagsterKubernetesClient.production_client().core_api
        return self._custom, self._core

    def run(self, *, context: dg.AssetExecutionContext, launcher, stage: str, spec_path: Path, root: Path,
            fingerprint: str, extras=None) -> dg.PipesClientCompletedInvocation:
        from dagster_k8s.pipes import PipesK8sPodLogsMessageReader
        from dagster_k8s.utils import detect_current_namespace
        cfg = launcher.kubernetes
        custom, core = self._apis()
        namespace = cfg.namespace or detect_current_namespace(None) or "default"
        reader = PipesK8sPodLogsMessageReader()
        with dg.open_pipes_session(context=context, extras=extras, context_injector=dg.PipesEnvContextInjector(),
                                   message_reader=reader) as session:
            name = trainjob_name(stage, fingerprint, secrets.token_hex(3))
            env = {**training_environment(), **cfg.env, **session.get_bootstrap_env_vars()}
            body = trainjob(name, namespace, launcher, launch_command(launcher, stage, spec_path, TRAIN_PROCESS),
                            env, root, stage)
            submit(custom, namespace, body)
            context.log.info(f"{stage}: TrainJob {namespace}/{name} submitted ({launcher.nnodes} nodes x "
                             f"{body['spec']['trainer']['numProcPerNode']} processes)")
            try:
                self._wait(context, custom, core, reader, name, namespace, cfg.wait_timeout)
            finally:
                custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                       propagation_policy="Foreground")
        return dg.PipesClientCompletedInvocation(session)

    def _wait(self, context, custom, core, reader, name: str, namespace: str, timeout: int | None) -> None:
        deadline = None if timeout is None else self.clock() + timeout
        streaming: threading.Thread | None = None
        while True:
            job = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            if streaming is None and (pod := rank_zero_pod(core, name, namespace)) is not None:
                streaming = threading.Thread(target=stream_logs, args=(context, reader, core, pod, namespace),
                                             daemon=True, name=f"logs-{pod}")
                streaming.start()
            if (ended := finished(job.get("status"))) is not None:
                if streaming is not None:
                    streaming.join(LOG_DRAIN_SECONDS)
                state, message = ended
                if state == "Failed":
                    raise TrainJobFailed(f"TrainJob {namespace}/{name} failed: {message or 'no message'}")
                return
            if deadline is not None and self.clock() > deadline:
                raise TrainJobFailed(f"TrainJob {namespace}/{name} still running after "
                                     f"launcher.kubernetes.wait_timeout {timeout} s; it is deleted")
            time.sleep(self.poll_interval)


def submit(custom, namespace: str, body: dict) -> None:
    """Create the TrainJob; a cluster without Kubeflow Trainer v2 (no trainjobs resource) is said in one line."""
    from kubernetes.client.exceptions import ApiException
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    except ApiException as exc:
        if exc.status == 404:
            raise TrainJobFailed(f"launcher.nnodes {body['spec']['trainer']['numNodes']} on kubernetes: namespace "
                                 f"{namespace} has no {PLURAL}.{GROUP}/{VERSION} (404): install Kubeflow Trainer v2, "
                                 "or train with launcher.nnodes 1") from None
        raise TrainJobFailed(f"TrainJob {namespace}/{body['metadata']['name']} was not created: {exc.status} "
                             f"{exc.reason}") from None


def rank_zero_pod(core, name: str, namespace: str) -> str | None:
    """The name of node rank 0's pod once its log can be read, else None."""
    pods = core.list_namespaced_pod(namespace, label_selector=rank_zero_selector(name)).items
    started = [p for p in pods if p.status is not None and p.status.phase in STARTED]
    return started[0].metadata.name if started else None


def stream_logs(context, reader, core, pod: str, namespace: str) -> None:
    """Rank 0's log into the run (Pipes messages to Dagster, other lines to stdout) until the pod ends."""
    try:
        reader.consume_pod_logs(context=context, core_api=core, pod_name=pod, namespace=namespace)
    except Exception as exc:  # the log is lost, not the training: its result is on the shared artifact root
        context.log.warning(f"the log of pod {namespace}/{pod} stopped: {type(exc).__name__}: {exc}")


def run_trainjob(context: dg.AssetExecutionContext, launcher, stage: str, spec_path: Path, root: Path,
                 fingerprint: str, client: PipesTrainJobClient | None = None) -> None:
    (client or PipesTrainJobClient()).run(context=context, launcher=launcher, stage=stage, spec_path=spec_path,
                                          root=root, fingerprint=fingerprint)
