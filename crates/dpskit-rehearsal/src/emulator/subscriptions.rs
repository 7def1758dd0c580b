//! One connection's subscriptions: the filters it holds with their granted QoS, capped as
//! IoT Hub caps them ("a device can only subscribe to five topics at a time").

use dpskit_core::topic::filter_matches;

/// Filters and granted QoS, in the order they were made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Subscriptions(Vec<(String, u8)>);

/// Why a filter was not added.
pub(crate) struct Full(pub usize);

impl Subscriptions {
    /// Adds (or re-grants) `filter` at `qos`, unless that would exceed `cap` filters.
    pub fn add(&mut self, filter: &str, qos: u8, cap: usize) -> Result<(), Full> {
        if let Some(have) = self.0.iter_mut().find(|(f, _)| f == filter) {
            have.1 = qos;
            return Ok(());
        }
        if self.0.len() >= cap {
            return Err(Full(cap));
        }
        self.0.push((filter.to_string(), qos));
        Ok(())
    }

    pub fn remove(&mut self, filter: &str) {
        self.0.retain(|(f, _)| f != filter);
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn filters(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(f, _)| f.as_str())
    }

    /// The QoS a publish on `topic` goes out with, or `None` when nothing matches.
    pub fn granted_qos(&self, topic: &str) -> Option<u8> {
        self.0
            .iter()
            .filter(|(f, _)| filter_matches(f, topic))
            .map(|(_, q)| *q)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_deduplicated_and_matched() {
        let mut s = Subscriptions::default();
        for i in 0..5 {
            assert!(s.add(&format!("$iothub/x{i}/#"), 0, 5).is_ok());
        }
        assert!(
            s.add("$iothub/x0/#", 1, 5).is_ok(),
            "re-granting is no new filter"
        );
        assert!(matches!(s.add("$iothub/x5/#", 1, 5), Err(Full(5))));
        assert_eq!(s.granted_qos("$iothub/x0/a"), Some(1));
        assert_eq!(s.granted_qos("$iothub/y/a"), None);
        s.remove("$iothub/x0/#");
        assert!(s.add("$iothub/x5/#", 1, 5).is_ok());
    }
}
