"""Integration tests: they start a real tritonserver (see triton_server.TritonServer)."""
