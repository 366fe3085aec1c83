"""skiff.orchestrator: a thin Kubernetes-style layer on the CRI service (issue 7). So far: the
API objects read from Kubernetes YAML and checked (api/), label selectors (labels.py), the
state store on SQLite or etcd (store/), and the API server with its client (apiserver.py,
client.py)."""
