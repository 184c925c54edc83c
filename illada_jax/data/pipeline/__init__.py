"""The training pipeline: prepared or on-the-fly datasets, mixtures, packed windows."""
