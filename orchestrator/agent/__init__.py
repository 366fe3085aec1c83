"""The node agent (the kubelet's job) on one node: `node.py` registers the Node and posts its
heartbeat, `pods.py` runs the pods bound to the node through the node's CRI service and
reports their status. It reaches the runtime only over CRI gRPC (`cri_api.v1` stubs on the
unix socket), as kubelet does."""
