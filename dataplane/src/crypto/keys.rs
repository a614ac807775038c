//! Node keys: each node has a static X25519 key pair. The private key is a
//! file of its own (32 bytes in base64, like `wg genkey` writes them),
//! readable by the daemon alone; the public key goes into the node's entry
//! in the cluster file or etcd.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};

pub const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("a key is {KEY_LEN} bytes in base64 (44 characters), not `{0}`")]
    Format(String),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

/// A node's public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; KEY_LEN]);

fn decode(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let t = text.trim();
    let shown = || {
        let mut s: String = t.chars().take(48).collect();
        if t.chars().count() > 48 {
            s.push('…');
        }
        s
    };
    let bytes = STANDARD.decode(t).map_err(|_| KeyError::Format(shown()))?;
    bytes.try_into().map_err(|_| KeyError::Format(shown()))
}

impl PublicKey {
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        decode(text).map(PublicKey)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A node's static key pair. `Debug` shows the public half only.
pub struct NodeKey {
    private: [u8; KEY_LEN],
    public: PublicKey,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey(public {})", self.public)
    }
}

impl PartialEq for NodeKey {
    fn eq(&self, other: &NodeKey) -> bool {
        self.public == other.public
    }
}

fn curve25519() -> Box<dyn snow::types::Dh> {
    DefaultResolver
        .resolve_dh(&DHChoice::Curve25519)
        .expect("snow's default resolver has Curve25519")
}

impl NodeKey {
    /// A new key pair from the system's random source.
    pub fn generate() -> NodeKey {
        let mut rng = DefaultResolver
            .resolve_rng()
            .expect("snow's default resolver has an RNG");
        let mut dh = curve25519();
        dh.generate(&mut *rng)
            .expect("the system's random source works");
        let mut private = [0u8; KEY_LEN];
        private.copy_from_slice(dh.privkey());
        NodeKey::from_private(private)
    }

    pub fn from_private(private: [u8; KEY_LEN]) -> NodeKey {
        let mut dh = curve25519();
        dh.set(&private);
        let mut public = [0u8; KEY_LEN];
        public.copy_from_slice(dh.pubkey());
        NodeKey {
            private,
            public: PublicKey(public),
        }
    }

    /// A private key in base64.
    pub fn parse(text: &str) -> Result<NodeKey, KeyError> {
        decode(text).map(NodeKey::from_private)
    }

    /// Reads a key file, refusing one that others than its owner may read
    /// or write (the key would no longer be this node's alone).
    pub fn load(path: &Path) -> Result<NodeKey, KeyError> {
        use std::os::unix::fs::PermissionsExt;
        let err = |reason: String| KeyError::File {
            path: path.display().to_string(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(err(format!(
                "mode {mode:04o} lets others read or write the private key (chmod 600 it)"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        NodeKey::parse(&text).map_err(|e| err(e.to_string()))
    }

    /// Writes the private key to a new file of mode 0600 (an existing file
    /// is never overwritten).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        writeln!(f, "{}", self.private_base64())?;
        f.sync_all()
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub fn private_base64(&self) -> String {
        STANDARD.encode(self.private)
    }

    pub(crate) fn private(&self) -> &[u8; KEY_LEN] {
        &self.private
    }
}

impl Drop for NodeKey {
    fn drop(&mut self) {
        self.private.fill(0);
        std::hint::black_box(&self.private);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7748 section 6.1: Alice's private key gives her public key.
    #[test]
    fn the_public_key_is_rfc_7748s() {
        let hex = |s: &str| -> [u8; 32] {
            let v: Vec<u8> = (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect();
            v.try_into().unwrap()
        };
        let k = NodeKey::from_private(hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        assert_eq!(
            k.public().0,
            hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
    }

    #[test]
    fn keys_round_trip_through_text_and_bad_text_is_named() {
        let k = NodeKey::generate();
        let again = NodeKey::parse(&format!("{}\n", k.private_base64())).unwrap();
        assert_eq!(again.public(), k.public());
        assert_eq!(PublicKey::parse(&k.public().to_string()), Ok(k.public()));
        assert!(
            matches!(PublicKey::parse("c2hvcnQ="), Err(KeyError::Format(s)) if s == "c2hvcnQ=")
        );
        assert!(!format!("{k:?}").contains(&k.private_base64()));
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("vxmesh-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.key");
        let _ = std::fs::remove_file(&path);
        let k = NodeKey::generate();
        k.save(&path).unwrap();
        assert_eq!(NodeKey::load(&path).unwrap().public(), k.public());
        assert!(k.save(&path).is_err(), "never overwritten");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = NodeKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("mode 0644"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
