//! What the boot core reads from the firmware's device tree: RAM, CPUs, the PSCI conduit,
//! `/chosen` and the virtio-mmio transports.
//!
//! `fdt`'s convenience accessors (`cpus()`, `memory()`, `chosen()`, `Cpu::ids()`) panic when a
//! node or property is missing, so this module only uses `find_node`, `all_nodes` and property
//! look-ups, and turns every absence into a [`DtError`].

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use fdt::node::FdtNode;
use fdt::Fdt;

/// The board facts the hypervisor needs at boot.
#[derive(Debug)]
pub struct BoardFacts<'a> {
    /// The root node's `compatible` (first string), e.g. `linux,dummy-virt`.
    pub compatible: Option<&'a str>,
    /// RAM regions, from every node with `device_type = "memory"`.
    pub ram: Vec<Range<usize>>,
    /// The CPUs of `/cpus`, in device-tree order: their MPIDR affinity (`reg`).
    pub cpus: Vec<u64>,
    /// `/psci`'s `method` (`smc` or `hvc`), if there is a `/psci` node.
    pub psci_method: Option<&'a str>,
    /// `/chosen`, if present.
    pub chosen: Option<Chosen<'a>>,
    /// The `reg` of every node compatible with `virtio,mmio`, in device-tree order (QEMU's virt
    /// board: 32 transports of 0x200 bytes from 0x0a00_0000, most of them empty).
    pub virtio_mmio: Vec<Range<usize>>,
}

/// The `/chosen` node.
#[derive(Debug, Clone, Copy)]
pub struct Chosen<'a> {
    pub bootargs: Option<&'a str>,
    pub stdout_path: Option<&'a str>,
}

/// Why the device tree could not be read.
#[derive(Debug)]
pub enum DtError {
    Parse(fdt::FdtError),
    NoCpusNode,
    NoCpus,
    CpuWithoutReg(&'static str),
    BadReg { name: &'static str, len: usize },
    NoMemory,
    VirtioWithoutReg(&'static str),
}

impl fmt::Display for DtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DtError::Parse(e) => write!(f, "not a valid flattened device tree: {e:?}"),
            DtError::NoCpusNode => write!(f, "no /cpus node"),
            DtError::NoCpus => write!(f, "/cpus has no cpu node"),
            DtError::CpuWithoutReg(name) => write!(f, "/cpus/{name} has no reg property"),
            DtError::BadReg { name, len } => {
                write!(f, "/cpus/{name}: reg of {len} bytes (one 1- or 2-cell address expected)")
            }
            DtError::NoMemory => write!(f, "no memory node with a reg property"),
            DtError::VirtioWithoutReg(name) => write!(f, "virtio,mmio node {name} has no reg region with a size"),
        }
    }
}

/// Reads the board facts from a flattened device tree.
pub fn read(dtb: &'static [u8]) -> Result<BoardFacts<'static>, DtError> {
    let fdt = Fdt::new(dtb).map_err(DtError::Parse)?;
    // `Fdt` borrows `dtb` for 'static, so the strings it hands out are 'static too; the parsed
    // view itself is only needed here.
    let compatible = fdt.find_node("/").and_then(|root| str_prop(root, "compatible"));

    let cpus_node = fdt.find_node("/cpus").ok_or(DtError::NoCpusNode)?;
    let mut cpus = Vec::new();
    for cpu in cpus_node.children().filter(|n| str_prop(*n, "device_type") == Some("cpu")) {
        let name: &'static str = cpu.name;
        let reg = cpu.property("reg").ok_or(DtError::CpuWithoutReg(name))?;
        let mpidr = reg.as_usize().ok_or(DtError::BadReg { name, len: reg.value.len() })?;
        cpus.push(mpidr as u64);
    }
    if cpus.is_empty() {
        return Err(DtError::NoCpus);
    }

    let mut ram = Vec::new();
    for node in fdt.all_nodes().filter(|n| str_prop(*n, "device_type") == Some("memory")) {
        for region in node.reg().into_iter().flatten() {
            let start = region.starting_address as usize;
            if let Some(size) = region.size.filter(|s| *s > 0) {
                ram.push(start..start.saturating_add(size));
            }
        }
    }
    if ram.is_empty() {
        return Err(DtError::NoMemory);
    }

    let psci_method = fdt.find_node("/psci").and_then(|n| str_prop(n, "method"));
    let chosen = fdt
        .find_node("/chosen")
        .map(|n| Chosen { bootargs: str_prop(n, "bootargs"), stdout_path: str_prop(n, "stdout-path") });
    let mut virtio_mmio = Vec::new();
    for node in fdt.all_nodes().filter(|n| has_compatible(*n, "virtio,mmio")) {
        let name: &'static str = node.name;
        let region = node.reg().and_then(|mut regs| regs.next()).ok_or(DtError::VirtioWithoutReg(name))?;
        let size = region.size.filter(|s| *s > 0).ok_or(DtError::VirtioWithoutReg(name))?;
        let start = region.starting_address as usize;
        virtio_mmio.push(start..start.saturating_add(size));
    }
    Ok(BoardFacts { compatible, ram, cpus, psci_method, chosen, virtio_mmio })
}

/// Whether one of the strings of the node's `compatible` is `name`.
fn has_compatible(node: FdtNode<'_, 'static>, name: &str) -> bool {
    node.property("compatible").is_some_and(|p| p.value.split(|b| *b == 0).any(|s| s == name.as_bytes()))
}

/// A string property (the first string of a string list), if present and valid UTF-8.
fn str_prop(node: FdtNode<'_, 'static>, name: &str) -> Option<&'static str> {
    let value = node.property(name)?.value;
    let first = value.split(|b| *b == 0).next()?;
    core::str::from_utf8(first).ok()
}
