//! Encrypted networks (`encrypted = true`): every datagram of such a
//! network between two nodes is sealed with a session key the two nodes
//! made with a Noise IK handshake, and a datagram of it that is not sealed
//! is dropped, whoever sent it.
//!
//! - [`wire`]: the three message types and their layout;
//! - [`keys`]: node key pairs and their files;
//! - [`aead`]: AES-256-GCM or ChaCha20-Poly1305 from ring;
//! - [`replay`]: the receive window;
//! - [`session`]: keypairs and the table the lanes seal and open with;
//! - [`manager`]: the handshakes and timers that fill that table.

pub mod aead;
pub mod keys;
pub mod manager;
pub mod replay;
pub mod session;
pub mod wire;

pub use aead::Cipher;
pub use keys::{KeyError, NodeKey, PublicKey};
pub use manager::{CryptoConfig, Manager};
pub use session::{Crypto, CryptoCounters, Keypair, RekeyPolicy, SessionTable};
