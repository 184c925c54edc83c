"""Observability: FLOPs per token and MFU (`flops`), metric writers (`writers`), console progress
(`progress`)."""

from illada_jax.obs.flops import (
    PEAK_FLOPS,
    device_peak_flops,
    forward_flops_per_token,
    matmul_params,
    measure_matmul_flops,
    mfu,
    peak_table_key,
    total_peak_flops,
    train_flops_per_token,
)
from illada_jax.obs.progress import TrainProgress, format_log_line
from illada_jax.obs.writers import METRICS_FILE, MetricWriter

__all__ = [
    "METRICS_FILE",
    "PEAK_FLOPS",
    "MetricWriter",
    "TrainProgress",
    "device_peak_flops",
    "format_log_line",
    "forward_flops_per_token",
    "matmul_params",
    "measure_matmul_flops",
    "mfu",
    "peak_table_key",
    "total_peak_flops",
    "train_flops_per_token",
]
