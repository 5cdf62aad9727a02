//! Secrets: password hashes (Argon2id) and session tokens.
//!
//! Passwords are only ever held in memory long enough to hash or verify them. Session tokens are
//! 32 random bytes from the OS CSPRNG, handed to the client as 64 hex digits; the database
//! stores only their SHA-256, so a leaked database holds no usable token. A plain hash (no salt,
//! no stretching) is enough there because the token has 256 bits of entropy, unlike a password.

use std::sync::OnceLock;

use argon2::password_hash::{self, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use sha2::{Digest, Sha256};

/// Why a secret could not be made or checked (always a server fault, answered `500`).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The OS random number generator failed.
    #[error("random number generator failed: {0}")]
    Rng(getrandom::Error),
    /// Argon2 failed, or a stored hash is not a valid PHC string.
    #[error("password hash: {0}")]
    Hash(password_hash::Error),
}

/// How expensive password hashing is. A stored hash carries its own parameters, so hashes made
/// at one cost verify under any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashCost {
    /// Argon2id with 19 MiB and 2 passes (OWASP's recommendation). Use this for real passwords.
    Standard,
    /// Argon2id with 1 MiB and 1 pass: for tests in unoptimised builds and load tests only.
    Fast,
}

/// Hashes and verifies passwords. CPU-heavy: call it from a blocking thread, never from an async
/// worker.
pub struct Passwords {
    argon: Argon2<'static>,
    /// A hash of a random password, verified against when the user does not exist, so that a
    /// wrong username takes as long as a wrong password (no user enumeration by timing).
    decoy: OnceLock<String>,
}

impl Passwords {
    /// A hasher at `cost`.
    pub fn new(cost: HashCost) -> Self {
        let params = match cost {
            HashCost::Standard => Params::new(19 * 1024, 2, 1, None),
            HashCost::Fast => Params::new(1024, 1, 1, None),
        }
        .unwrap_or_default();
        Self {
            argon: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            decoy: OnceLock::new(),
        }
    }

    /// The PHC string (`$argon2id$v=19$m=…`) for `password` with a fresh random salt.
    pub fn hash(&self, password: &str) -> Result<String, SecretError> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(SecretError::Rng)?;
        let salt = SaltString::encode_b64(&salt).map_err(SecretError::Hash)?;
        let hash = self
            .argon
            .hash_password(password.as_bytes(), &salt)
            .map_err(SecretError::Hash)?;
        Ok(hash.to_string())
    }

    /// Whether `password` matches the stored `hash`.
    pub fn verify(&self, password: &str, hash: &str) -> Result<bool, SecretError> {
        let parsed = PasswordHash::new(hash).map_err(SecretError::Hash)?;
        match self.argon.verify_password(password.as_bytes(), &parsed) {
            Ok(()) => Ok(true),
            Err(password_hash::Error::Password) => Ok(false),
            Err(err) => Err(SecretError::Hash(err)),
        }
    }

    /// Spends the time of one verification and returns `false`: used for unknown usernames.
    pub fn verify_decoy(&self, password: &str) -> Result<bool, SecretError> {
        let decoy = match self.decoy.get() {
            Some(decoy) => decoy,
            None => {
                let fresh = self.hash(&Token::generate()?.0)?;
                self.decoy.get_or_init(|| fresh)
            }
        };
        self.verify(password, decoy).map(|_| false)
    }
}

/// A session token as the client sees it: 64 lowercase hex digits.
pub struct Token(pub String);

impl Token {
    /// A new token from 32 bytes of OS randomness.
    pub fn generate() -> Result<Token, SecretError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(SecretError::Rng)?;
        Ok(Token(hex(&bytes)))
    }
}

/// What the database stores for a token: its SHA-256.
pub fn token_digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}
