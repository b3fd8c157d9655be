"""The merge engine: plan -> schedule -> execute, one output tensor per job.

``plan`` turns validated inputs into typed per-tensor plans; ``scheduler`` runs jobs on worker threads under a
memory budget; ``reference`` executes a plan with the methods' tensor functions; ``fused`` with the numba kernels
(``kernels``) where a method declares that they cover it; ``blocks`` cuts large tensors into rows.
"""
