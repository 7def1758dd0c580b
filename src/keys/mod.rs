//! Keys: batches of registration IDs, derivation, and verification of keys made elsewhere.
