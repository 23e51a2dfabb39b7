"""Training: configs (`config`), stage kinds (`stages`), the loop (`loop`), checkpoints,
logs, DDP helpers and validation metrics. Import submodules directly."""
