"""Published figures of the accelerators, by `device_kind` prefix: dense
bf16 peak FLOP/s (for MFU), memory and memory bandwidth (for the AOT fit
check and roofline). Vendors' data sheets: NVIDIA H100 SXM5 / H200 / A100
SXM; Google Cloud TPU system architecture pages (v3 figures per core, as
a v3 chip is two JAX devices).
"""

import dataclasses

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
  peak_flops: float  # dense bf16 FLOP/s
  memory_bytes: float | None  # None where the kind has several sizes
  bandwidth: float  # memory bytes/s


# Longer prefixes first: 'TPU v5 lite' (v5e) before 'TPU v5' (v5p, which
# reports its kind as 'TPU v5').
DEVICE_SPECS = {
    'NVIDIA H200': DeviceSpec(989e12, 141e9, 4.8e12),
    'NVIDIA H100': DeviceSpec(989e12, 80e9, 3.35e12),  # 80 GB as sold
    'NVIDIA A100-SXM4-80GB': DeviceSpec(312e12, 80 * GIB, 2.04e12),
    'NVIDIA A100': DeviceSpec(312e12, None, 2.04e12),
    'TPU v6 lite': DeviceSpec(918e12, 32 * GIB, 1640e9),
    'TPU v5 lite': DeviceSpec(197e12, 16 * GIB, 819e9),
    'TPU v5': DeviceSpec(459e12, 95 * GIB, 2765e9),
    'TPU v4': DeviceSpec(275e12, 32 * GIB, 1228e9),
    'TPU v3': DeviceSpec(61.5e12, 16 * GIB, 450e9),
}


def spec_of(device_kind: str) -> DeviceSpec | None:
  for prefix, spec in DEVICE_SPECS.items():
    if device_kind.startswith(prefix):
      return spec
  return None
