//! The one interface the firmware's driver loop runs: `handle(now_ms, Event)` →
//! `Vec<Action<Output>>` plus `next_deadline()`, the contract of `dpskit_core::mqtt`.
//! Implemented for the core's DPS and hub clients, and for whatever application composes
//! them, so the driver does not change when the application does.

use alloc::vec::Vec;
use dpskit_core::dps::DpsOutcome;
use dpskit_core::{Action, DpsClient, Event, HubClient, HubOutput};
use dpskit_device::{AppOutput, DeviceApp};

/// A sans-IO state machine the driver runs over one MQTT connection at a time.
pub trait Machine {
    type Output;
    fn handle(&mut self, now_ms: u64, event: Event<'_>) -> Vec<Action<Self::Output>>;
    /// When to send the next `Event::Tick` (Unix ms).
    fn next_deadline(&self) -> Option<u64>;
}

impl Machine for DpsClient {
    type Output = DpsOutcome;
    fn handle(&mut self, now_ms: u64, event: Event<'_>) -> Vec<Action<DpsOutcome>> {
        DpsClient::handle(self, now_ms, event)
    }
    fn next_deadline(&self) -> Option<u64> {
        DpsClient::next_deadline(self)
    }
}

impl Machine for HubClient {
    type Output = HubOutput;
    fn handle(&mut self, now_ms: u64, event: Event<'_>) -> Vec<Action<HubOutput>> {
        HubClient::handle(self, now_ms, event)
    }
    fn next_deadline(&self) -> Option<u64> {
        HubClient::next_deadline(self)
    }
}

impl Machine for DeviceApp {
    type Output = AppOutput;
    fn handle(&mut self, now_ms: u64, event: Event<'_>) -> Vec<Action<AppOutput>> {
        DeviceApp::handle(self, now_ms, event)
    }
    fn next_deadline(&self) -> Option<u64> {
        DeviceApp::next_deadline(self)
    }
}
