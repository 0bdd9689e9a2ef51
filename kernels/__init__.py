"""Triton kernels for fastmsfd (installed as fastmsfd.kernels). Each kernel file names the reference it mirrors:

    distance.py      combined distance forward (+ backward statistics) and its gradient: layer_distance()
    anomaly_map.py   up-sampling + aggregation of all layers in one kernel, image score: fused_anomaly_map()

They import nothing of fastmsfd: fastmsfd/ops/triton_ops.py adapts them to the shared plan and registers their
autograd (the backend "triton" of fastmsfd/ops/dispatch.py), as compiled.py does for the C++/CUDA ops.

They are registered with torch.library.triton_op in the C++ ops' namespace with a triton_ prefix and the same
schemas (fastmsfd::triton_anomaly_map beside fastmsfd::anomaly_map), so torch.compile and export see them.
On a CPU they run only under TRITON_INTERPRET=1 (set before this package is imported), for testing.
"""
