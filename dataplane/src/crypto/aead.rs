//! The data AEAD, from ring: AES-256-GCM where the CPUs of both nodes have
//! AES instructions (AES-NI and CLMUL on x86-64), ChaCha20-Poly1305
//! otherwise (its software speed beats AES without them). The two nodes
//! agree on it in the handshake. The nonce is WireGuard's: 4 zero bytes
//! and the 64-bit counter, little-endian; a key never sees a counter twice
//! (see [`super::session::Keypair::seal`]).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};

use super::wire::TAG_LEN;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cipher {
    ChaCha20Poly1305,
    Aes256Gcm,
}

impl Cipher {
    /// What this CPU runs fastest.
    pub fn preferred() -> Cipher {
        if aes_in_hardware() {
            Cipher::Aes256Gcm
        } else {
            Cipher::ChaCha20Poly1305
        }
    }

    /// The cipher two nodes use: AES-GCM only when both prefer it.
    pub fn agree(a: Cipher, b: Cipher) -> Cipher {
        if a == Cipher::Aes256Gcm && b == Cipher::Aes256Gcm {
            Cipher::Aes256Gcm
        } else {
            Cipher::ChaCha20Poly1305
        }
    }

    pub fn to_byte(self) -> u8 {
        match self {
            Cipher::ChaCha20Poly1305 => 0,
            Cipher::Aes256Gcm => 1,
        }
    }

    pub fn from_byte(b: u8) -> Option<Cipher> {
        match b {
            0 => Some(Cipher::ChaCha20Poly1305),
            1 => Some(Cipher::Aes256Gcm),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
            Cipher::Aes256Gcm => "aes-256-gcm",
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn aes_in_hardware() -> bool {
    std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
}

#[cfg(target_arch = "aarch64")]
fn aes_in_hardware() -> bool {
    std::arch::is_aarch64_feature_detected!("aes")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn aes_in_hardware() -> bool {
    false
}

/// One direction's key.
pub struct AeadKey {
    key: LessSafeKey,
    pub cipher: Cipher,
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AeadKey({})", self.cipher.as_str())
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

impl AeadKey {
    pub fn new(cipher: Cipher, key: &[u8; 32]) -> AeadKey {
        let alg = match cipher {
            Cipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
            Cipher::Aes256Gcm => &AES_256_GCM,
        };
        // Both algorithms take 32-byte keys: this cannot fail.
        let unbound = UnboundKey::new(alg, key).expect("a 32-byte key");
        AeadKey {
            key: LessSafeKey::new(unbound),
            cipher,
        }
    }

    /// Seals `body` in place under `counter` with `aad`; the tag comes back.
    pub fn seal(&self, counter: u64, aad: &[u8], body: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(aad), body)
            .expect("ring seals any length below 2^32 blocks");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Opens `sealed` (the body followed by its tag) in place; `false`
    /// when it does not authenticate (the bytes are then garbage).
    pub fn open(&self, counter: u64, aad: &[u8], sealed: &mut [u8]) -> bool {
        self.key
            .open_in_place(nonce(counter), Aad::from(aad), sealed)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ciphers_round_trip_and_refuse_any_change() {
        for c in [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm] {
            let k = AeadKey::new(c, &[7u8; 32]);
            let mut buf = b"inner frame bytes".to_vec();
            let tag = k.seal(5, b"hdr", &mut buf);
            assert_ne!(&buf[..], b"inner frame bytes");
            let mut sealed = [buf.clone(), tag.to_vec()].concat();
            assert!(k.open(5, b"hdr", &mut sealed.clone()));
            assert!(!k.open(6, b"hdr", &mut sealed.clone()), "another counter");
            assert!(!k.open(5, b"hdx", &mut sealed.clone()), "another header");
            sealed[3] ^= 1;
            assert!(!k.open(5, b"hdr", &mut sealed), "a flipped bit");
        }
    }

    /// RFC 8439 section 2.8.2: the AEAD_CHACHA20_POLY1305 test vector (the
    /// nonce there is 07000000 4041424344454647, which is ours for no
    /// counter, so only the tag is checked through ring directly).
    #[test]
    fn chacha_matches_rfc_8439() {
        let key: Vec<u8> = (0x80u8..=0x9f).collect();
        let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap());
        let nonce = [
            0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47,
        ];
        let aad = [
            0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
        ];
        let mut text = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".to_vec();
        let tag = k
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut text,
            )
            .unwrap();
        assert_eq!(
            tag.as_ref(),
            [
                0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a, 0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60,
                0x06, 0x91
            ]
        );
        assert_eq!(&text[..4], [0xd3, 0x1a, 0x8d, 0x34]);
    }

    #[test]
    fn aes_is_used_only_when_both_nodes_have_it() {
        use Cipher::*;
        assert_eq!(Cipher::agree(Aes256Gcm, Aes256Gcm), Aes256Gcm);
        assert_eq!(Cipher::agree(Aes256Gcm, ChaCha20Poly1305), ChaCha20Poly1305);
        assert_eq!(Cipher::agree(ChaCha20Poly1305, Aes256Gcm), ChaCha20Poly1305);
        for c in [Aes256Gcm, ChaCha20Poly1305] {
            assert_eq!(Cipher::from_byte(c.to_byte()), Some(c));
        }
        assert_eq!(Cipher::from_byte(9), None);
    }
}
