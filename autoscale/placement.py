"""Place replicas on the accelerators of one kind: whole-GPU tensor-parallel groups within a node,
fractional replicas packed onto shared GPUs (largest first)."""

from __future__ import annotations

from dataclasses import dataclass, field

from paliserve.spec import GpuLayout, GpuSlot


@dataclass(frozen=True)
class ReplicaGroup:
    """`count` replicas of one deployment, each taking `share` of `tp` devices."""

    deployment: str
    count: int
    share: float
    tp: int
    memory_utilization: float


@dataclass
class _Device:
    node: int
    free: float = 1.0
    slots: list[GpuSlot] = field(default_factory=list)


def place(groups: list[ReplicaGroup], accelerator: str, per_node: int) -> list[GpuLayout]:
    """Layout of the devices the groups need; its length is the device count."""
    devices: list[_Device] = []

    def open_device(node: int | None = None) -> _Device:
        if node is None:
            last = devices[-1].node if devices else 0
            node = last if sum(d.node == last for d in devices) < per_node else last + 1
        device = _Device(node=node)
        devices.append(device)
        return device

    def slot(group: ReplicaGroup, replica: int, share: float) -> GpuSlot:
        return GpuSlot(deployment=group.deployment, replica=replica, share=share,
                       memory_utilization=group.memory_utilization)

    for group in sorted(groups, key=lambda g: (-g.tp * g.share, g.deployment)):
        for replica in range(group.count):
            if group.share < 1:
                device = next((d for d in devices if d.free >= group.share - 1e-9), None) or open_device()
                device.free -= group.share
                device.slots.append(slot(group, replica, group.share))
                continue
            last = devices[-1].node if devices else -1
            used = sum(d.node == last for d in devices)
            node = last if devices and used + group.tp <= per_node else last + 1
            for _ in range(group.tp):
                device = open_device(node)
                device.free = 0.0
                device.slots.append(slot(group, replica, 1.0))
    return [
        GpuLayout(index=i, type=accelerator, node=d.node, slots=d.slots) for i, d in enumerate(devices)
    ]
