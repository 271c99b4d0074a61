"""Shared test support: free ports, the tiny offline model, managed engine/router processes.

Other test modules import these helpers (`tests.support.X`); keep one copy of each here.
"""
