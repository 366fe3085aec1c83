"""skiff: a Linux container runtime and pod sandbox library.

Layers, each importing only those to its left:
errors <- oci <- runtime, images <- cri <- orchestrator
"""

__version__ = "0.1.0"
