//! Scenario model (being written).
