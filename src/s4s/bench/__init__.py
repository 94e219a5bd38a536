"""Benchmarks that print measured tables: baselines on the exact mixture model (:mod:`.gmm`) and
baselines vs learned solvers on a real model (:mod:`.model`)."""
