"""skiff.orchestrator: filled by a later issue."""
