"""The CRI RuntimeService RPCs, one module per object and verb."""
