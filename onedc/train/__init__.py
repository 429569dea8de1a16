"""Training: Stage I (codec + generator LoRA in pixel space); losses, checkpoints, the loop."""
