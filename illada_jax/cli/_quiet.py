"""No start-up noise on hosts that are not using a TPU: what `illada` sets before JAX,
TensorFlow (seqio, TFDS) or Apache Beam start (docs/troubleshooting.md#quiet-start-up).

- libtpu (the `[tpu]` extra) on a host without accelerators: JAX would start its TPU backend and
  libtpu would log its failed probes; `JAX_PLATFORMS=cpu` skips that backend
  (`parallel.topology.quiet_libtpu_on_cpu_host`, which also keeps `illada compile`'s libtpu quiet:
  it still compiles for TPU topologies without a TPU backend).
- C++ logs of TensorFlow and XLA below ERROR (`TF_CPP_MIN_LOG_LEVEL=2`), and the start-up lines
  of libtpu / gRPC's absl logging below ERROR.
- Python loggers of the libraries (absl, Beam, TensorFlow, orbax) at WARNING; illada's own
  messages (INFO) still show.

Every variable is only a default: one the user set is left alone. `--debug` / `ILLADA_DEBUG=1`
skip all of it.
"""

from __future__ import annotations

import logging
import os

NOISY_LOGGERS = ("absl", "apache_beam", "tensorflow", "orbax", "jax._src.xla_bridge", "etils")
QUIET_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow / XLA C++ logs: errors only
    "GRPC_VERBOSITY": "ERROR",
    "GLOG_minloglevel": "2",
    "TPU_MIN_LOG_LEVEL": "2",  # libtpu's own log, when it is loaded (compile)
    "TPU_STDERR_LOG_LEVEL": "2",
}


def quiet_startup(debug: bool = False) -> None:
    """Set the quiet defaults (nothing when `debug`)."""
    if debug:
        return
    from illada_jax.parallel.topology import quiet_libtpu_on_cpu_host

    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    quiet_libtpu_on_cpu_host()
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
