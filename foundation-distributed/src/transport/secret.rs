//! The shared cluster secret of [`Security::Secret`](super::Security::Secret): at least
//! 32 bytes of high entropy, read from a file, checked before anything starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{Error, Result};

/// The shortest accepted cluster secret, in bytes (256 bits).
pub const MIN_SECRET_LEN: usize = 32;

/// Lowest accepted Shannon entropy estimate of a secret's bytes, in bits per byte.
///
/// 32 uniformly random bytes estimate at about 4.8 bits per byte (the estimate is capped
/// by `log2(len)`); the chance that they estimate below 4.0 is negligible. Repeated
/// patterns, hex text that was not decoded and short alphabets fall below it.
const MIN_ENTROPY_BITS_PER_BYTE: f64 = 4.0;

/// What every refusal of a secret says, so the user knows what to provide.
const REQUIREMENT: &str = "a cluster secret must be at least 32 bytes of high-entropy random data \
     (a file holding 64+ hex digits or 32+ raw random bytes); create one with \
     `ClusterSecret::generate_file` (or `foundation secret generate`)";

/// The shared cluster secret.
///
/// Only strong secrets can be built: [`generate`](Self::generate) makes one,
/// [`from_file`](Self::from_file) and [`from_bytes`](Self::from_bytes) check one
/// (at least [`MIN_SECRET_LEN`] bytes of high entropy), and a weak or short secret is
/// refused with [`Error::InvalidSettings`] naming the requirement. `Debug` never prints
/// it and it never serializes (settings write back the file path, or `<redacted>`).
/// [`Default`] is the empty secret, which settings validation refuses.
#[derive(Clone, Default)]
pub struct ClusterSecret {
    bytes: Arc<[u8]>,
    source: Option<PathBuf>,
}

impl PartialEq for ClusterSecret {
    fn eq(&self, other: &Self) -> bool {
        use subtle_eq::ct_eq;
        ct_eq(&self.bytes, &other.bytes)
    }
}

impl Eq for ClusterSecret {}

mod subtle_eq {
    /// Constant-time comparison of equal-length slices (length is not secret).
    pub(super) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl ClusterSecret {
    /// A fresh secret of 32 bytes from `rand`'s thread-local CSPRNG (ChaCha12, seeded and
    /// periodically reseeded from the operating system's random source).
    pub fn generate() -> Self {
        let bytes: [u8; MIN_SECRET_LEN] = rand::random();
        ClusterSecret {
            bytes: Arc::from(&bytes[..]),
            source: None,
        }
    }

    /// Generates a secret and writes it to `path` as 64 hex digits and a newline (file
    /// mode 0600 on Unix; an existing file is not overwritten). Returns the secret, which
    /// remembers its file.
    pub fn generate_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut secret = Self::generate();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(path)
            .map_err(|e| Error::io(&path.display().to_string(), e))?;
        use std::io::Write;
        writeln!(file, "{}", hex(&secret.bytes))
            .map_err(|e| Error::io(&path.display().to_string(), e))?;
        secret.source = Some(path.to_owned());
        Ok(secret)
    }

    /// Reads and checks a secret file: 64+ hex digits (surrounding whitespace ignored), or
    /// 32+ raw bytes. Weak or short content is refused with a clear error.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let raw = std::fs::read(path).map_err(|e| Error::InvalidSettings {
            reason: format!("cannot read cluster secret file {}: {e}", path.display()),
        })?;
        let mut secret = Self::from_text_or_bytes(&raw).map_err(|e| match e {
            Error::InvalidSettings { reason } => Error::InvalidSettings {
                reason: format!("secret file {}: {reason}", path.display()),
            },
            other => other,
        })?;
        secret.source = Some(path.to_owned());
        Ok(secret)
    }

    /// A secret from hex digits (64 or more, i.e. 32+ bytes), checked like
    /// [`from_bytes`](Self::from_bytes). Handy for tests that need two transports to share
    /// a fixed secret.
    pub fn from_hex(text: &str) -> Result<Self> {
        let bytes = unhex(text.trim()).ok_or_else(|| Error::InvalidSettings {
            reason: format!("the cluster secret is not valid hex; {REQUIREMENT}"),
        })?;
        Self::from_bytes(bytes)
    }

    /// A secret from raw bytes, refused unless it is at least [`MIN_SECRET_LEN`] bytes
    /// long and of high entropy (not text, not a repeated pattern).
    pub fn from_bytes(bytes: impl AsRef<[u8]>) -> Result<Self> {
        let bytes = bytes.as_ref();
        check_strength(bytes)?;
        Ok(ClusterSecret {
            bytes: Arc::from(bytes),
            source: None,
        })
    }

    fn from_text_or_bytes(raw: &[u8]) -> Result<Self> {
        let trimmed = raw.trim_ascii();
        if !trimmed.is_empty() && trimmed.iter().all(u8::is_ascii_hexdigit) {
            return match unhex_bytes(trimmed) {
                Some(bytes) => Self::from_bytes(bytes),
                None => Err(Error::InvalidSettings {
                    reason: format!("odd number of hex digits; {REQUIREMENT}"),
                }),
            };
        }
        if !trimmed.is_empty() && trimmed.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            return Err(Error::InvalidSettings {
                reason: format!(
                    "the secret looks like a password or passphrase (printable text that is \
                     not hex), which is too easy to guess; {REQUIREMENT}"
                ),
            });
        }
        Self::from_bytes(raw)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the secret is empty (the default, which settings validation refuses).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The file the secret was read from or written to, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Checks the secret again (settings validation calls it).
    pub(crate) fn check(&self) -> Result<()> {
        if self.is_empty() {
            return Err(Error::InvalidSettings {
                reason: format!("no cluster secret configured; {REQUIREMENT}"),
            });
        }
        check_strength(&self.bytes)
    }

    pub(crate) fn expose(&self) -> &[u8] {
        &self.bytes
    }
}

fn check_strength(bytes: &[u8]) -> Result<()> {
    if bytes.len() < MIN_SECRET_LEN {
        return Err(Error::InvalidSettings {
            reason: format!(
                "the cluster secret has {} bytes, fewer than {MIN_SECRET_LEN}; {REQUIREMENT}",
                bytes.len()
            ),
        });
    }
    let entropy = entropy_bits_per_byte(bytes);
    if entropy < MIN_ENTROPY_BITS_PER_BYTE {
        return Err(Error::InvalidSettings {
            reason: format!(
                "the cluster secret has low entropy ({entropy:.2} bits per byte, at least \
                 {MIN_ENTROPY_BITS_PER_BYTE} required: repeated or patterned bytes); {REQUIREMENT}"
            ),
        });
    }
    Ok(())
}

/// Shannon entropy of the byte histogram, in bits per byte.
fn entropy_bits_per_byte(bytes: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let n = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if !text.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    unhex_bytes(text)
}

fn unhex_bytes(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecret(<{} bytes redacted>", self.bytes.len())?;
        if let Some(path) = &self.source {
            write!(f, " from {}", path.display())?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_pass_and_differ() {
        for _ in 0..200 {
            let a = ClusterSecret::generate();
            assert!(a.check().is_ok(), "{:.2}", entropy_bits_per_byte(&a.bytes));
            assert_ne!(a, ClusterSecret::generate());
        }
    }

    #[test]
    fn weak_secrets_are_refused_naming_the_requirement() {
        for weak in [
            &b"short"[..],
            b"0123456789abcdef-secret",
            &[7u8; 64],
            b"abababababababababababababababababababab",
        ] {
            let e = ClusterSecret::from_bytes(weak).unwrap_err().to_string();
            assert!(e.contains("at least 32 bytes of high-entropy"), "{e}");
        }
        let e = ClusterSecret::from_text_or_bytes(b"correct horse battery staple and more words")
            .unwrap_err()
            .to_string();
        assert!(e.contains("passphrase"), "{e}");
        let patterned = "0123456789abcdef".repeat(4);
        assert!(ClusterSecret::from_hex(&patterned).is_err());
    }

    #[test]
    fn files_round_trip() {
        let dir = std::env::temp_dir().join(format!("fd-secret-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster.secret");
        let written = ClusterSecret::generate_file(&path).unwrap();
        let read = ClusterSecret::from_file(&path).unwrap();
        assert_eq!(written, read);
        assert_eq!(read.source(), Some(path.as_path()));
        // Never overwrites.
        assert!(ClusterSecret::generate_file(&path).is_err());
        assert!(!format!("{read:?}").contains(&hex(&read.bytes)));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
