"""skiff.images: filled by a later issue."""
