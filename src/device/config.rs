//! [`DeviceConfig`] and the environment variables that fill it.
//!
//! Parsing is pure (it reads through a lookup function), so every rule is unit-tested
//! without touching the process environment.

use std::fmt;

use crate::error::{Error, Result};

/// How bytes move between host memory and the device pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferPath {
    /// `memcpy` through the pool's own mapping; no submission. Chosen when the pool memory is
    /// `HOST_VISIBLE | HOST_COHERENT | HOST_CACHED` (integrated GPUs, lavapipe).
    Direct,
    /// `vkCmdCopyBuffer` through a host-visible staging ring. Chosen for device-local memory
    /// the CPU cannot map (discrete GPUs).
    Staged,
}

impl fmt::Display for TransferPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransferPath::Direct => "direct",
            TransferPath::Staged => "staged",
        })
    }
}

/// Options for opening a device, as [`DeviceInfo::query`](super::DeviceInfo::query) takes
/// them (a runtime gets the same options from [`RuntimeBuilder`](crate::RuntimeBuilder)).
///
/// `Default` picks the best device, the transfer path the pool memory calls for, a budget of
/// 80% of the pool's heap and a 16 MiB staging ring. [`DeviceConfig::from_env`] reads the
/// same from `VKHMM_DEVICE`, `VKHMM_TRANSFER` and `VKHMM_BUDGET`.
///
/// Start from either and set the fields you want; the struct is `#[non_exhaustive]`, so a
/// later version can add options without breaking code that does so:
///
/// ```
/// let mut config = vkhmm::diagnostics::DeviceConfig::default();
/// config.transfer = Some(vkhmm::TransferPath::Staged);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceConfig {
    /// Which device: a decimal enumeration index, or a case-insensitive substring of the
    /// device name. `None` takes the best by type (discrete > integrated > virtual > CPU).
    pub filter: Option<String>,
    /// Force a transfer path (tests run both on every machine). `None` chooses from the pool
    /// memory type; forcing `Direct` on memory the CPU cannot map is an error.
    pub transfer: Option<TransferPath>,
    /// Device-memory budget in bytes. `None` = 80% of the pool memory type's heap.
    pub budget: Option<u64>,
    /// Total size of each staging ring (Staged path), split into slots.
    pub staging_bytes: u64,
}

/// Default size of a staging ring: 16 MiB.
pub const DEFAULT_STAGING_BYTES: u64 = 16 << 20;

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            filter: None,
            transfer: None,
            budget: None,
            staging_bytes: DEFAULT_STAGING_BYTES,
        }
    }
}

impl DeviceConfig {
    /// The default configuration with `VKHMM_DEVICE` (index or name substring),
    /// `VKHMM_TRANSFER` (`direct` or `staged`) and `VKHMM_BUDGET` (bytes, optional `K`/`M`/`G`
    /// suffix, binary multiples) applied. Unset or empty variables keep the defaults.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when a variable is set to something it cannot mean.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// [`from_env`](Self::from_env) over an arbitrary variable lookup.
    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut config = DeviceConfig {
            filter: get("VKHMM_DEVICE"),
            ..DeviceConfig::default()
        };
        if let Some(v) = get("VKHMM_TRANSFER") {
            config.transfer = Some(parse_transfer(&v)?);
        }
        if let Some(v) = get("VKHMM_BUDGET") {
            config.budget = Some(
                parse_bytes(&v)
                    .map_err(|why| Error::InvalidConfig(format!("VKHMM_BUDGET={v:?}: {why}")))?,
            );
        }
        Ok(config)
    }
}

/// `direct` or `staged`, any case.
fn parse_transfer(v: &str) -> Result<TransferPath> {
    match v.to_ascii_lowercase().as_str() {
        "direct" => Ok(TransferPath::Direct),
        "staged" => Ok(TransferPath::Staged),
        _ => Err(Error::InvalidConfig(format!(
            "VKHMM_TRANSFER={v:?}: expected `direct` or `staged`"
        ))),
    }
}

/// A byte count: decimal digits, optionally followed by `K`, `M` or `G` (binary multiples,
/// any case, an optional trailing `iB`/`B`).
pub(crate) fn parse_bytes(v: &str) -> std::result::Result<u64, &'static str> {
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, suffix) = v.split_at(digits);
    let number: u64 = number.parse().map_err(|_| "expected a number of bytes")?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err("unknown suffix (use K, M or G)"),
    };
    number.checked_mul(1 << shift).ok_or("too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn bytes_take_binary_suffixes() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("512m"), Ok(512 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert_eq!(parse_bytes("3GiB"), Ok(3 << 30));
        assert_eq!(parse_bytes("1 MB"), Ok(1 << 20));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("G").is_err());
        assert!(parse_bytes("12T").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("99999999999999999999G").is_err());
        assert!(parse_bytes("18446744073709551615G").is_err());
    }

    #[test]
    fn env_fills_the_config() {
        let c = DeviceConfig::from_lookup(lookup(&[
            ("VKHMM_DEVICE", " llvm "),
            ("VKHMM_TRANSFER", "Staged"),
            ("VKHMM_BUDGET", "256M"),
        ]))
        .unwrap();
        assert_eq!(c.filter.as_deref(), Some("llvm"));
        assert_eq!(c.transfer, Some(TransferPath::Staged));
        assert_eq!(c.budget, Some(256 << 20));
        assert_eq!(c.staging_bytes, DEFAULT_STAGING_BYTES);

        let c = DeviceConfig::from_lookup(lookup(&[("VKHMM_DEVICE", ""), ("VKHMM_TRANSFER", "")]))
            .unwrap();
        assert_eq!(c, DeviceConfig::default());
        let c = DeviceConfig::from_lookup(lookup(&[("VKHMM_TRANSFER", "DIRECT")])).unwrap();
        assert_eq!(c.transfer, Some(TransferPath::Direct));
    }

    #[test]
    fn bad_env_values_are_invalid_config() {
        for vars in [
            &[("VKHMM_TRANSFER", "fast")][..],
            &[("VKHMM_BUDGET", "lots")][..],
        ] {
            let e = DeviceConfig::from_lookup(lookup(vars)).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidConfig(s) if s.contains(vars[0].0)),
                "{e}"
            );
        }
    }
}
