"""Path-based orchestration: scan a checkpoint file, fix it, follow a run, shard under torchrun, save stats."""
