#!/usr/bin/env python3
"""Writes the saved hwloc 2.x XML machines that tests/test_topology.c loads with
hwloc_topology_set_xml (tests/topologies/*.xml).  Trimmed to a few cores per socket; the I/O
tree (host bridge -> PCIe switch -> GPU PCI device -> CUDA + NVML OS devices) is laid out the
way hwloc's linux / cuda / nvml backends export it, with each GPU under the package (and so the
NUMA node) it is attached to.  Run: python3 tests/reference/make_topologies.py"""
import os

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "topologies")

class W:
    def __init__(self):
        self.lines, self.gp = [], 0
    def gpi(self):
        self.gp += 1
        return self.gp
    def add(self, depth, s):
        self.lines.append("  " * depth + s)

def mask(bits):
    v = 0
    for b in bits:
        v |= 1 << b
    return "0x%08x" % v if v < (1 << 32) else "0x%08x,0x%08x" % (v >> 32, v & 0xffffffff)

def machine(name, host, sockets, cores_per_socket, pus_per_core, numa_bytes, gpus):
    """gpus: list of (socket, busid, pci_device_id, model, mem_kib, cuda_index or None, nvml_index or None)"""
    w = W()
    n_pu = sockets * cores_per_socket * pus_per_core
    all_pu = mask(range(n_pu))
    all_nodes = mask(range(sockets))
    w.add(0, '<?xml version="1.0" encoding="UTF-8"?>')
    w.add(0, '<!DOCTYPE topology SYSTEM "hwloc2.dtd">')
    w.add(0, '<topology version="2.0">')
    w.add(1, f'<object type="Machine" os_index="0" cpuset="{all_pu}" complete_cpuset="{all_pu}" '
             f'allowed_cpuset="{all_pu}" nodeset="{all_nodes}" complete_nodeset="{all_nodes}" '
             f'allowed_nodeset="{all_nodes}" gp_index="{w.gpi()}">')
    w.add(2, '<info name="Backend" value="Linux"/>')
    w.add(2, f'<info name="HostName" value="{host}"/>')
    w.add(2, '<info name="Architecture" value="x86_64"/>')
    w.add(2, '<info name="hwlocVersion" value="2.9.0"/>')
    pu = 0
    for s in range(sockets):
        pus = list(range(s * cores_per_socket * pus_per_core, (s + 1) * cores_per_socket * pus_per_core))
        cs, ns = mask(pus), mask([s])
        w.add(2, f'<object type="Package" os_index="{s}" cpuset="{cs}" complete_cpuset="{cs}" '
                 f'nodeset="{ns}" complete_nodeset="{ns}" gp_index="{w.gpi()}">')
        w.add(3, '<info name="CPUVendor" value="GenuineIntel"/>')
        w.add(3, '<info name="CPUModel" value="Intel(R) Xeon(R) Platinum 8480C"/>')
        w.add(3, f'<object type="NUMANode" os_index="{s}" cpuset="{cs}" complete_cpuset="{cs}" '
                 f'nodeset="{ns}" complete_nodeset="{ns}" gp_index="{w.gpi()}" local_memory="{numa_bytes}">')
        w.add(4, f'<page_type size="4096" count="{numa_bytes // 4096}"/>')
        w.add(3, '</object>')
        for c in range(cores_per_socket):
            core_pus = pus[c * pus_per_core:(c + 1) * pus_per_core]
            cc = mask(core_pus)
            w.add(3, f'<object type="Core" os_index="{c}" cpuset="{cc}" complete_cpuset="{cc}" '
                     f'nodeset="{ns}" complete_nodeset="{ns}" gp_index="{w.gpi()}">')
            for p in core_pus:
                pc = mask([p])
                w.add(4, f'<object type="PU" os_index="{p}" cpuset="{pc}" complete_cpuset="{pc}" '
                         f'nodeset="{ns}" complete_nodeset="{ns}" gp_index="{w.gpi()}"/>')
            w.add(3, '</object>')
        # I/O: one host bridge per GPU, a PCIe switch port under it, the GPU under that
        for (gs, busid, devid, model, mem_kib, cuda_i, nvml_i) in gpus:
            if gs != s:
                continue
            dom, bus = busid.split(":")[0], busid.split(":")[1]
            up = "%02x" % (int(bus, 16) - 1)
            w.add(3, f'<object type="Bridge" gp_index="{w.gpi()}" bridge_type="0-1" depth="0" '
                     f'bridge_pci="{dom}:[{up}-{bus}]">')
            w.add(4, f'<object type="Bridge" gp_index="{w.gpi()}" bridge_type="1-1" depth="1" '
                     f'bridge_pci="{dom}:[{bus}-{bus}]" pci_busid="{dom}:{up}:00.0" '
                     f'pci_type="0604 [1000:c030] [1000:a064] b0" pci_link_speed="31.507692">')
            w.add(5, f'<object type="PCIDev" gp_index="{w.gpi()}" pci_busid="{busid}" '
                     f'pci_type="0302 [10de:{devid}] [10de:16c1] a1" pci_link_speed="31.507692">')
            w.add(6, '<info name="PCIVendor" value="NVIDIA Corporation"/>')
            if cuda_i is not None:
                w.add(6, f'<object type="OSDev" gp_index="{w.gpi()}" name="cuda{cuda_i}" '
                         f'subtype="CUDA" osdev_type="5">')
                w.add(7, '<info name="Backend" value="CUDA"/>')
                w.add(7, '<info name="GPUVendor" value="NVIDIA Corporation"/>')
                w.add(7, f'<info name="GPUModel" value="{model}"/>')
                w.add(7, f'<info name="CUDAGlobalMemorySize" value="{mem_kib}"/>')
                w.add(7, '<info name="CUDAL2CacheSize" value="51200"/>')
                w.add(7, '<info name="CUDAMultiProcessors" value="132"/>')
                w.add(7, '<info name="CUDACoresPerMP" value="128"/>')
                w.add(7, '<info name="CUDASharedMemorySizePerMP" value="228"/>')
                w.add(6, '</object>')
            if nvml_i is not None:
                w.add(6, f'<object type="OSDev" gp_index="{w.gpi()}" name="nvml{nvml_i}" '
                         f'subtype="NVML" osdev_type="1">')
                w.add(7, '<info name="Backend" value="NVML"/>')
                w.add(7, '<info name="GPUVendor" value="NVIDIA Corporation"/>')
                w.add(7, f'<info name="GPUModel" value="{model}"/>')
                w.add(7, f'<info name="NVIDIASerial" value="165222{nvml_i:07d}"/>')
                w.add(7, f'<info name="NVIDIAUUID" value="GPU-0000000{nvml_i}-1111-2222-3333-444455556666"/>')
                w.add(6, '</object>')
            w.add(5, '</object>')
            w.add(4, '</object>')
            w.add(3, '</object>')
        w.add(2, '</object>')
    w.add(1, '</object>')
    w.add(0, '</topology>')
    with open(os.path.join(OUT, name), "w") as f:
        f.write("\n".join(w.lines) + "\n")

H100 = ("2330", "NVIDIA H100 80GB HBM3", 83058176)        # 85,051,572,224 bytes
RTX = ("2684", "NVIDIA GeForce RTX 4090", 25153536)       # 25,757,220,864 bytes
dgx_bus = ["0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0",
           "0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0"]
machine("dgx-h100-2socket-8gpu.xml", "dgx01", 2, 8, 2, 1 << 40,
        [(i // 4, b, H100[0], H100[1], H100[2], i, i) for i, b in enumerate(dgx_bus)])
box_bus = ["0000:01:00.0", "0000:21:00.0", "0000:41:00.0", "0000:61:00.0"]
# GPUs 2 and 3 expose only a CUDA device (no NVML): the merge by PCI bus id must not double them
machine("pcie-1socket-4gpu.xml", "box4090", 1, 8, 2, 128 << 30,
        [(0, b, RTX[0], RTX[1], RTX[2], i, i if i < 2 else None) for i, b in enumerate(box_bus)])
