"""What a training stage becomes on a cluster, as plain manifests (no client, no dagster): the pod parts every
training pod shares (pods.py) and the Kubeflow TrainJob of a multi-node stage (trainjob.py)."""
