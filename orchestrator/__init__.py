"""orchestrator: everything Ray. Experiment specs (YAML), the Ray Tune runner, shared work, Parquet results, CLI.

`sentinel/` never imports ray; every `import ray` of the project lives in this package.
"""
