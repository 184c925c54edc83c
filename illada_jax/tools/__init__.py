"""Tools around training: AOT compilation for TPU topologies (`aot`)."""
