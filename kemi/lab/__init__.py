"""What only tests and drills run: network namespaces, the drill, SIPp, the cluster harness.

Nothing that runs on a node imports this package (tests/unit/test_layers.py).
"""
