"""The training loop (no Ray here) and its CLI, `python -m rqscale.train CONFIG [key=value ...]`."""
