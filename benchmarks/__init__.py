"""The project's benchmarks, run from the repository root: ``python -m benchmarks`` lists them,
``python -m benchmarks NAME [args]`` runs ``benchmarks/NAME.py`` (each appends a run record to
``benchmarks/runs/NAME.jsonl`` when it calls ``common.record``), ``python -m benchmarks --table NAME`` prints
the latest record as markdown. Not installed with the package."""
