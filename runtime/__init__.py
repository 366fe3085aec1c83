"""skiff.runtime"""
