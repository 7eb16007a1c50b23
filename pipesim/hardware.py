"""Named devices: memory, dense BF16 peak and network bandwidth from the vendors' datasheets.

``[hardware] preset = "h100-sxm"`` fills the ``[hardware]`` table from ``PRESETS``; any key
given beside it overrides. Memory is the datasheet's capacity read as GiB (the "80GB" of an
H100 is 80 GiB of HBM, 81,559 MiB as the driver reports it); peak is dense (not sparse) BF16
tensor-core throughput; ``p2p_bandwidth_gbps`` is the per-device scale-out network a pipeline
hop crosses between nodes (one 400 Gb/s NIC per GPU = 50 GB/s), since pipeline stages usually
sit on different nodes.

Sources: NVIDIA H100 Tensor Core GPU datasheet (SXM5: 80 GB, BF16 989.4 TFLOPS dense);
H800 (SXM, the China-market H100 with NVLink reduced to 400 GB/s: same memory and BF16); H200
datasheet (141 GB HBM3e, BF16 989 TFLOPS); B200 in the HGX B200 datasheet (180 GB per GPU,
BF16 2.25 PFLOPS dense); A100 datasheet (40 / 80 GB, BF16 312 TFLOPS, HDR 200 Gb/s = 25 GB/s);
AMD Instinct MI300X datasheet (192 GB HBM3, BF16 1307.4 TFLOPS dense).

``nvlink_bandwidth_gbps`` is the scale-up link inside a node, per direction (the datasheets
quote both directions together): H100 / H200 SXM NVLink 900 GB/s -> 450; H800 400 -> 200;
B200 NVLink 5 1.8 TB/s -> 900; A100 NVLink 3 600 -> 300; MI300X Infinity Fabric 7 x 128 GB/s
peer links = 896 -> 448. ``node_size`` devices share one scale-up domain (8 on all of them).
An expert-parallel all-to-all within a node runs on NVLink, across nodes on the scale-out NIC
(``pipesim.comm``).
"""
from __future__ import annotations

PRESETS: dict[str, dict[str, float]] = {
    "h100-sxm": {"memory_gib": 80.0, "peak_tflops": 989.4, "p2p_bandwidth_gbps": 50.0, "nvlink_bandwidth_gbps": 450.0},
    "h800": {"memory_gib": 80.0, "peak_tflops": 989.4, "p2p_bandwidth_gbps": 50.0, "nvlink_bandwidth_gbps": 200.0},
    "h200": {"memory_gib": 141.0, "peak_tflops": 989.4, "p2p_bandwidth_gbps": 50.0, "nvlink_bandwidth_gbps": 450.0},
    "b200": {"memory_gib": 180.0, "peak_tflops": 2250.0, "p2p_bandwidth_gbps": 50.0, "nvlink_bandwidth_gbps": 900.0},
    "a100-40gb": {"memory_gib": 40.0, "peak_tflops": 312.0, "p2p_bandwidth_gbps": 25.0, "nvlink_bandwidth_gbps": 300.0},
    "a100-80gb": {"memory_gib": 80.0, "peak_tflops": 312.0, "p2p_bandwidth_gbps": 25.0, "nvlink_bandwidth_gbps": 300.0},
    "mi300x": {"memory_gib": 192.0, "peak_tflops": 1307.4, "p2p_bandwidth_gbps": 50.0, "nvlink_bandwidth_gbps": 448.0},
}

# What the framework cannot use: the CUDA context (about 0.5 GiB with PyTorch on CUDA 12) and
# the buffers of the NCCL communicators a run opens (NCCL_BUFFSIZE, 4 MiB per channel and peer,
# for each of its TP / DP / PP / EP groups). An allowance, not a measurement: set 0 to compare
# with torch.cuda.max_memory_allocated(), which counts neither.
DEFAULT_RESERVE_GIB = 1.0
