//! Energy: the model of what each core's states cost, and the accounting of where a run's
//! energy went; the consolidation [`governor`] decides with the model which cores to keep on.
//!
//! An [`EnergyModel`] describes each core type's operating points (frequency, capacity, power)
//! and idle states (power, entry and exit latency, minimum residency), what an off core costs,
//! and each cluster's shared logic with its own idle states. It is read from the board's
//! device tree ([`EnergyModel::from_dtb`], the Linux bindings SoC vendors already maintain),
//! from TOML (`EnergyModel::from_toml`, feature `std`), or taken from a built-in profile
//! ([`EnergyModel::builtin`], [`EnergyModel::for_board`]). Bad input is rejected with a
//! [`ModelError`] that names the device-tree node and property, or the field, and the reason:
//!
//! ```text
//! /opp-table-cpu/opp-998400000: opp-hz: not increasing (998400000 after 1209600000): list OPPs from slowest to fastest
//! core_types[0].opps[2].power_uw: must not be negative, got -5
//! ```
//!
//! [`Accounting`] keeps per-core residency and transition counts, optionally each cluster's,
//! and charges energy to vCPUs and VMs. Units, formulas, bindings, the TOML format and the sources of the built-in
//! profiles are in `docs/energy-models.md`.
#![cfg_attr(not(any(test, loom)), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod accounting;
mod clusters;
mod dt;
pub mod energy;
pub mod governor;
pub mod model;
mod profiles;
#[cfg(feature = "std")]
mod toml_format;

pub use accounting::{Accounting, AccountingError, CoreEnergy, CoreState};
pub use energy::{energy_nj, Energy};
pub use model::{
    dynamic_power_uw, Cluster, ClusterState, CoreModel, CoreType, EnergyModel, IdleState, ModelError, Opp,
    CAPACITY_SCALE,
};
pub use profiles::{ProfileError, PROFILE_NAMES};

impl EnergyModel {
    /// Reads the model from a flattened device tree blob (see the `dt` module documentation
    /// and `docs/energy-models.md` for the properties read). Its name is the root's `model`.
    pub fn from_dtb(blob: &[u8]) -> Result<EnergyModel, ModelError> {
        dt::load(blob)
    }

    /// Reads the model from the TOML format of `docs/energy-models.md`.
    #[cfg(feature = "std")]
    pub fn from_toml(text: &str) -> Result<EnergyModel, ModelError> {
        toml_format::parse(text)
    }
}
