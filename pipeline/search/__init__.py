"""Search: the space, the architecture read two ways, the cost functions, the Oracle and Tuner, the results,
and the distributed chief and worker."""
