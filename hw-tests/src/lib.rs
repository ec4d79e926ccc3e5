//! QEMU-driven tests arrive with the EL2 hypervisor.
