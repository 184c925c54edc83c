"""Training: the objective wiring, the optimiser and the runner."""
