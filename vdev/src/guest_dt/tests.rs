//! Host tests of the guest device tree: `cargo test -p vdev guest_dt`. Every tree is parsed
//! back with the `fdt` crate and checked node by node, property by property; where `dtc` is
//! installed, it must also read the tree without a warning.

use super::*;
use std::collections::BTreeSet;
use std::string::String;

const MIB: u64 = 1 << 20;
const CPUS2: [u64; 2] = [0x8000_0000, 0x8000_0001];

/// What the platform passes for a two-vCPU guest with 256 MiB, a UART and an initramfs.
fn config<'a>(cpus: &'a [u64], bootargs: &'a str) -> GuestDtConfig<'a> {
    GuestDtConfig {
        ram_base: 0x4000_0000,
        ram_size: 256 * MIB,
        cpus,
        psci: PsciConduit::Hvc,
        gicd_base: 0x0800_0000,
        gicd_size: 0x1_0000,
        gicr_base: 0x080A_0000,
        gicr_size: cpus.len() as u64 * GICR_STRIDE,
        timer: TimerPpis::SBSA,
        uart: Some(Pl011Node::QEMU_VIRT),
        bootargs,
        initrd: Some(0x4E00_0000..0x4E12_3456),
    }
}

fn parse(dtb: &[u8]) -> fdt::Fdt<'_> {
    fdt::Fdt::new(dtb).expect("the generated tree parses")
}

fn node<'b, 'a>(t: &'b fdt::Fdt<'a>, path: &str) -> fdt::node::FdtNode<'b, 'a> {
    t.find_node(path).unwrap_or_else(|| panic!("no node {path}"))
}

fn raw<'a>(n: fdt::node::FdtNode<'_, 'a>, name: &str) -> &'a [u8] {
    n.property(name).unwrap_or_else(|| panic!("{}: no property {name}", n.name)).value
}

fn cells(n: fdt::node::FdtNode<'_, '_>, name: &str) -> Vec<u32> {
    let v = raw(n, name);
    assert_eq!(v.len() % 4, 0, "{}: {name} is whole cells", n.name);
    v.chunks(4).map(|c| u32::from_be_bytes(c.try_into().unwrap())).collect()
}

/// A property of 64-bit values (two cells each).
fn quads(n: fdt::node::FdtNode<'_, '_>, name: &str) -> Vec<u64> {
    let v = raw(n, name);
    assert_eq!(v.len() % 8, 0, "{}: {name} is whole pairs of cells", n.name);
    v.chunks(8).map(|c| u64::from_be_bytes(c.try_into().unwrap())).collect()
}

fn strings<'a>(n: fdt::node::FdtNode<'_, 'a>, name: &str) -> Vec<&'a str> {
    let v = raw(n, name);
    assert_eq!(v.last(), Some(&0), "{}: {name} is NUL-terminated", n.name);
    v[..v.len() - 1].split(|&b| b == 0).map(|s| core::str::from_utf8(s).unwrap()).collect()
}

fn string<'a>(n: fdt::node::FdtNode<'_, 'a>, name: &str) -> &'a str {
    let s = strings(n, name);
    assert_eq!(s.len(), 1, "{}: {name} is one string", n.name);
    s[0]
}

fn prop_names(n: fdt::node::FdtNode<'_, '_>) -> BTreeSet<String> {
    n.properties().map(|p| String::from(p.name)).collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| String::from(*s)).collect()
}

fn child_names(n: fdt::node::FdtNode<'_, '_>) -> Vec<String> {
    n.children().map(|c| String::from(c.name)).collect()
}

#[test]
fn guest_dt_every_node_and_property() {
    let cpus = CPUS2;
    let dtb = generate(&config(&cpus, "console=ttyAMA0 earlycon rdinit=/init")).unwrap();
    assert_eq!(u32::from_be_bytes(dtb[0..4].try_into().unwrap()), 0xd00d_feed, "FDT magic");
    assert_eq!(u32::from_be_bytes(dtb[28..32].try_into().unwrap()), 0, "boot_cpuid_phys: vCPU 0");
    let t = parse(&dtb);
    assert_eq!(t.total_size(), dtb.len());
    assert_eq!(t.memory_reservations().count(), 0);

    let root = node(&t, "/");
    assert_eq!(prop_names(root), names(&["#address-cells", "#size-cells", "compatible", "model", "interrupt-parent"]));
    assert_eq!(cells(root, "#address-cells"), [2]);
    assert_eq!(cells(root, "#size-cells"), [2]);
    assert_eq!(strings(root, "compatible"), ["linux,dummy-virt"]);
    assert_eq!(cells(root, "interrupt-parent"), [GIC_PHANDLE]);
    assert_eq!(
        child_names(root),
        ["chosen", "memory@40000000", "cpus", "psci", "intc@8000000", "timer", "apb-pclk", "pl011@9000000"]
    );

    let chosen = node(&t, "/chosen");
    assert_eq!(prop_names(chosen), names(&["bootargs", "stdout-path", "linux,initrd-start", "linux,initrd-end"]));
    assert_eq!(string(chosen, "bootargs"), "console=ttyAMA0 earlycon rdinit=/init");
    assert_eq!(string(chosen, "stdout-path"), "/pl011@9000000");
    assert_eq!(quads(chosen, "linux,initrd-start"), [0x4E00_0000]);
    assert_eq!(quads(chosen, "linux,initrd-end"), [0x4E12_3456]);
    assert_eq!(t.chosen().bootargs(), Some("console=ttyAMA0 earlycon rdinit=/init"));
    assert_eq!(t.chosen().stdout().map(|n| n.name), Some("pl011@9000000"), "stdout-path names the UART node");

    let memory = node(&t, "/memory@40000000");
    assert_eq!(prop_names(memory), names(&["device_type", "reg"]));
    assert_eq!(string(memory, "device_type"), "memory");
    assert_eq!(quads(memory, "reg"), [0x4000_0000, 256 * MIB]);
    let regions: Vec<_> = t.memory().regions().map(|r| (r.starting_address as u64, r.size)).collect();
    assert_eq!(regions, [(0x4000_0000, Some(256 * MIB as usize))]);

    let cpus_node = node(&t, "/cpus");
    assert_eq!(prop_names(cpus_node), names(&["#address-cells", "#size-cells"]));
    assert_eq!(cells(cpus_node, "#address-cells"), [1]);
    assert_eq!(cells(cpus_node, "#size-cells"), [0]);
    assert_eq!(child_names(cpus_node), ["cpu@0", "cpu@1"]);
    for (i, c) in cpus_node.children().enumerate() {
        assert_eq!(prop_names(c), names(&["device_type", "compatible", "reg", "enable-method"]));
        assert_eq!(string(c, "device_type"), "cpu");
        assert_eq!(strings(c, "compatible"), ["arm,armv8"]);
        assert_eq!(cells(c, "reg"), [i as u32], "reg: the MPIDR's affinity bits, not bit 31");
        assert_eq!(string(c, "enable-method"), "psci");
    }
    let ids: Vec<_> = t.cpus().map(|c| c.ids().first()).collect();
    assert_eq!(ids, [0, 1]);

    let psci = node(&t, "/psci");
    assert_eq!(prop_names(psci), names(&["compatible", "method"]));
    assert_eq!(strings(psci, "compatible"), ["arm,psci-1.0", "arm,psci-0.2"]);
    assert_eq!(string(psci, "method"), "hvc");

    let gic = node(&t, "/intc@8000000");
    assert_eq!(
        prop_names(gic),
        names(&[
            "compatible",
            "interrupt-controller",
            "#interrupt-cells",
            "#address-cells",
            "#redistributor-regions",
            "reg",
            "phandle"
        ])
    );
    assert_eq!(strings(gic, "compatible"), ["arm,gic-v3"]);
    assert!(raw(gic, "interrupt-controller").is_empty());
    assert_eq!(cells(gic, "#interrupt-cells"), [3]);
    assert_eq!(cells(gic, "#address-cells"), [0]);
    assert_eq!(cells(gic, "#redistributor-regions"), [1]);
    assert_eq!(quads(gic, "reg"), [0x0800_0000, 0x1_0000, 0x080A_0000, 2 * 0x2_0000]);
    assert_eq!(cells(gic, "phandle"), [GIC_PHANDLE]);
    assert_eq!(gic.children().count(), 0, "no ITS");
    assert_eq!(t.find_phandle(GIC_PHANDLE).map(|n| n.name), Some("intc@8000000"));

    let timer = node(&t, "/timer");
    assert_eq!(prop_names(timer), names(&["compatible", "interrupts"]), "no always-on");
    assert_eq!(strings(timer, "compatible"), ["arm,armv8-timer", "arm,armv7-timer"]);
    assert_eq!(cells(timer, "interrupts"), [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]);

    let clock = node(&t, "/apb-pclk");
    assert_eq!(
        prop_names(clock),
        names(&["compatible", "#clock-cells", "clock-frequency", "clock-output-names", "phandle"])
    );
    assert_eq!(strings(clock, "compatible"), ["fixed-clock"]);
    assert_eq!(cells(clock, "#clock-cells"), [0]);
    assert_eq!(cells(clock, "clock-frequency"), [24_000_000]);
    assert_eq!(strings(clock, "clock-output-names"), ["apb_pclk"]);
    assert_eq!(cells(clock, "phandle"), [CLOCK_PHANDLE]);

    let uart = node(&t, "/pl011@9000000");
    assert_eq!(prop_names(uart), names(&["compatible", "reg", "interrupts", "clocks", "clock-names"]));
    assert_eq!(strings(uart, "compatible"), ["arm,pl011", "arm,primecell"]);
    assert_eq!(quads(uart, "reg"), [0x0900_0000, 0x1000]);
    assert_eq!(cells(uart, "interrupts"), [0, 1, 4], "SPI 1 = INTID 33, level-sensitive");
    assert_eq!(cells(uart, "clocks"), [CLOCK_PHANDLE, CLOCK_PHANDLE]);
    assert_eq!(strings(uart, "clock-names"), ["uartclk", "apb_pclk"]);
}

/// What Linux resolves: every `interrupts` property has whole 3-cell specifiers and its
/// parent (inherited from the root) is the interrupt controller.
#[test]
fn guest_dt_interrupts_resolve_to_the_gic() {
    let cpus = [0x8000_0000u64, 0x8000_0001, 0x8000_0002, 0x8000_0003];
    let dtb = generate(&config(&cpus, "")).unwrap();
    let t = parse(&dtb);
    let mut seen = 0;
    for n in t.all_nodes() {
        if n.property("interrupts").is_none() {
            continue;
        }
        seen += 1;
        // Its own `interrupt-parent`, or the one it inherits from the root.
        let holder = if n.property("interrupt-parent").is_some() { n } else { node(&t, "/") };
        let parent = t.find_phandle(cells(holder, "interrupt-parent")[0]).expect("an interrupt parent");
        assert!(parent.property("interrupt-controller").is_some());
        assert_eq!(parent.interrupt_cells(), Some(3));
        let c = cells(n, "interrupts");
        assert_eq!(c.len() % 3, 0, "{}", n.name);
        for spec in c.chunks(3) {
            assert!(spec[0] <= 1, "SPI or PPI");
            assert_eq!(spec[2], 4, "level-sensitive, active high, no CPU mask (GICv3)");
        }
    }
    assert_eq!(seen, 2, "the timer and the UART");
    let gic = node(&t, "/intc@8000000");
    assert_eq!(quads(gic, "reg")[3], 4 * GICR_STRIDE, "one frame pair per vCPU");
}

#[test]
fn guest_dt_without_uart_or_initrd() {
    let cpus = [0x8000_0000u64];
    let cfg = GuestDtConfig { uart: None, initrd: None, psci: PsciConduit::Smc, ..config(&cpus, "quiet") };
    let dtb = generate(&cfg).unwrap();
    let t = parse(&dtb);
    let chosen = node(&t, "/chosen");
    assert_eq!(prop_names(chosen), names(&["bootargs"]));
    assert_eq!(string(node(&t, "/psci"), "method"), "smc");
    assert_eq!(child_names(node(&t, "/")), ["chosen", "memory@40000000", "cpus", "psci", "intc@8000000", "timer"]);
    assert_eq!(child_names(node(&t, "/cpus")), ["cpu@0"]);
}

#[test]
fn guest_dt_wide_affinities_take_two_cells() {
    // Aff3 = 1: MPIDR bits 39:32.
    let cpus = [0x1_0000_0000u64, 0x1_0000_0100];
    let mut cfg = config(&cpus, "");
    cfg.gicr_size = 4 * GICR_STRIDE;
    let dtb = generate(&cfg).unwrap();
    let t = parse(&dtb);
    let cpus_node = node(&t, "/cpus");
    assert_eq!(cells(cpus_node, "#address-cells"), [2]);
    assert_eq!(child_names(cpus_node), ["cpu@100000000", "cpu@100000100"]);
    let regs: Vec<_> = cpus_node.children().map(|c| quads(c, "reg")[0]).collect();
    assert_eq!(regs, [0x1_0000_0000, 0x1_0000_0100]);
}

#[test]
fn guest_dt_is_deterministic() {
    let cpus = CPUS2;
    assert_eq!(generate(&config(&cpus, "a b c")).unwrap(), generate(&config(&cpus, "a b c")).unwrap());
}

#[test]
fn guest_dt_refuses_bad_configs() {
    let two = CPUS2;
    let none: [u64; 0] = [];
    assert_eq!(generate(&config(&none, "")), Err(GuestDtError::CpuCount(0)));
    let many: Vec<u64> = (0..65).collect();
    let mut cfg = config(&many, "");
    cfg.gicr_size = 65 * GICR_STRIDE;
    assert_eq!(generate(&cfg), Err(GuestDtError::CpuCount(65)));
    let dup = [0x8000_0001u64, 0x1];
    assert_eq!(generate(&config(&dup, "")), Err(GuestDtError::DuplicateCpu(1)));
    let cfg = GuestDtConfig { gicr_size: GICR_STRIDE, ..config(&two, "") };
    assert_eq!(generate(&cfg), Err(GuestDtError::RedistributorsTooSmall { need: 2 * GICR_STRIDE, have: GICR_STRIDE }));
    let cfg = GuestDtConfig { ram_size: 0, ..config(&two, "") };
    assert_eq!(generate(&cfg), Err(GuestDtError::BadRam));
    let cfg = GuestDtConfig { gicd_size: 0, ..config(&two, "") };
    assert_eq!(generate(&cfg), Err(GuestDtError::BadFrame("distributor")));
    let cfg = GuestDtConfig { initrd: Some(0x3FFF_F000..0x4000_1000), ..config(&two, "") };
    assert_eq!(generate(&cfg), Err(GuestDtError::InitrdOutsideRam));
    let cfg = GuestDtConfig { initrd: Some(0x4FFF_F000..0x5000_1000), ..config(&two, "") };
    assert_eq!(generate(&cfg), Err(GuestDtError::InitrdOutsideRam));
    let cfg = GuestDtConfig { initrd: Some(0x4100_0000..0x4100_0000), ..config(&two, "") };
    assert_eq!(generate(&cfg), Err(GuestDtError::InitrdOutsideRam));
    let cfg = GuestDtConfig { uart: Some(Pl011Node { intid: 27, ..Pl011Node::QEMU_VIRT }), ..config(&two, "") };
    assert_eq!(generate(&cfg), Err(GuestDtError::BadIntid("UART", 27)));
    let cfg = GuestDtConfig { timer: TimerPpis { virt: 33, ..TimerPpis::SBSA }, ..config(&two, "") };
    assert_eq!(generate(&cfg), Err(GuestDtError::BadIntid("timer", 33)));
    assert_eq!(generate(&config(&two, "a\0b")), Err(GuestDtError::Writer(vm_fdt::Error::InvalidString)));
}

/// The tree as `dtc` reads it: no warnings (its checks cover unit addresses against `reg`,
/// interrupt providers and phandles). Skipped, with a note, where `dtc` is not installed.
#[test]
fn guest_dt_dtc_reads_it_without_warnings() {
    let Ok(probe) = std::process::Command::new("dtc").arg("--version").output() else {
        std::eprintln!("note: dtc not installed, guest_dt_dtc_reads_it_without_warnings checks nothing");
        return;
    };
    assert!(probe.status.success());
    let cpus = CPUS2;
    let dtb = generate(&config(&cpus, "console=ttyAMA0")).unwrap();
    let path = std::env::temp_dir().join(std::format!("vdev-guest-dt-{}.dtb", std::process::id()));
    std::fs::write(&path, &dtb).unwrap();
    let out = std::process::Command::new("dtc").args(["-I", "dtb", "-O", "dts"]).arg(&path).output().unwrap();
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dtc failed: {stderr}");
    assert!(stderr.trim().is_empty(), "dtc warnings:\n{stderr}");
    let dts = String::from_utf8_lossy(&out.stdout);
    for line in ["method = \"hvc\";", "compatible = \"arm,gic-v3\";", "enable-method = \"psci\";"] {
        assert!(dts.contains(line), "{line} in\n{dts}");
    }
}
