//! Byte sizes for people: printing and parsing.

use crate::error::{Error, Result};

/// "1.23 GiB"-style sizes, with the exact byte count where it matters left to the caller.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

/// Parse "8GiB", "6.3GiB", "512MiB", "8GB", "1e9" into bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic() && c != 'e').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(Error::Usage(format!("bad size '{s}': unknown unit '{unit}'"))),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| Error::Usage(format!("bad size '{s}': '{num}' is not a number")))?;
    let bytes = v * mult;
    if !bytes.is_finite() || !(0.0..=1e18).contains(&bytes) {
        return Err(Error::Usage(format!("bad size '{s}': out of range")));
    }
    Ok(bytes.round() as u64)
}
