"""skiff.cri: filled by a later issue."""
