"""skiff.runtime.cli"""
