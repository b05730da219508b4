"""End-to-end streaming benchmark: `liveavatar-rt bench` / `python -m bench.e2e`.

hardware.py (fingerprint), peak.py (matmul peak measured in the run), flops.py (analytic DiT
FLOPs), stats.py, memory.py, e2e.py (the timed session), compare.py (vs reference ops),
report.py (the JSON schema, validation, text), cli.py (arguments).
"""
