"""The service proxy (kube-proxy): Services into nftables, per node."""
