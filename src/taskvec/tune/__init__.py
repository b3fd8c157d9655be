"""Choosing coefficients: a dev-set search over a recipe's searched values (``taskvec tune``) and label-free
AdaMerging. Candidates are merged in memory with the same engine as ``taskvec merge`` and scored by
``taskvec.evaluate``."""
