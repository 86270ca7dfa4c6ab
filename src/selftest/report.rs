//! The selftest's verdicts: NMSE, the comparison of a device's output with the reference
//! (NaN, guards, ids as sets), and the report as a table or JSON.

use super::{Op, Output};
use crate::rotary::device::PeakBandwidth;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

/// One row of the report.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub op: &'static str,
    pub quant: String,
    pub shape: String,
    pub backend: &'static str,
    pub nmse: Option<f64>,
    pub max_nmse: f64,
    pub status: Status,
    /// Why it failed or skipped.
    pub note: String,
    /// `--perf`: achieved weight bandwidth and its fraction of the device's copy bandwidth.
    pub gbps: Option<f64>,
    pub peak_fraction: Option<f64>,
}

/// Σ(a − b)² / Σ b² (0 when both are all zeros); NaN if either has a NaN.
pub fn nmse(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "nmse of different lengths");
    let (mut err, mut norm) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        if x.is_nan() || y.is_nan() {
            return f64::NAN;
        }
        err += (x as f64 - y as f64).powi(2);
        norm += (y as f64).powi(2);
    }
    if norm == 0.0 {
        if err == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        err / norm
    }
}

/// Compare a backend's output with the reference: NaN, guards, ids as sets, then NMSE.
pub fn compare(op: &Op, got: &Output, want: &Output) -> (Option<f64>, Status, String) {
    if !got.guards_ok {
        return (None, Status::Fail, "guard values around the output were overwritten".into());
    }
    if got.values.len() != want.values.len() || got.second.len() != want.second.len() {
        let msg = format!(
            "{} + {} values, want {} + {}",
            got.values.len(),
            got.second.len(),
            want.values.len(),
            want.second.len()
        );
        return (None, Status::Fail, msg);
    }
    if let Op::TopkMoe { k, .. } = *op {
        if got.ids.len() != want.ids.len() {
            return (None, Status::Fail, "wrong number of expert ids".into());
        }
        for (t, (g, w)) in got.ids.chunks(k).zip(want.ids.chunks(k)).enumerate() {
            let (mut g, mut w) = (g.to_vec(), w.to_vec());
            g.sort_unstable();
            w.sort_unstable();
            if g != w {
                // A tie at the k-th place may pick either expert: compare the weights instead.
                let gs: f32 = got.values[t * k..(t + 1) * k].iter().sum();
                let ws: f32 = want.values[t * k..(t + 1) * k].iter().sum();
                if (gs - ws).abs() > 1e-6 {
                    return (None, Status::Fail, format!("token {t}: experts {g:?}, want {w:?}"));
                }
            }
        }
    }
    let mut e = nmse(&got.values, &want.values);
    if !want.second.is_empty() {
        // The worse of the two (NaN stays NaN).
        let e2 = nmse(&got.second, &want.second);
        e = if e.is_nan() || e2.is_nan() { f64::NAN } else { e.max(e2) };
    }
    if e.is_nan() {
        return (Some(e), Status::Fail, "NaN in the output".into());
    }
    if e > op.max_nmse() {
        return (Some(e), Status::Fail, "NMSE over the bound".into());
    }
    (Some(e), Status::Pass, String::new())
}

/// What `run` found: the device's peak memory bandwidth (with `perf`) and one row per case.
#[derive(Clone, Debug)]
pub struct Report {
    pub device: String,
    pub peak: Option<PeakBandwidth>,
    pub cases: Vec<CaseResult>,
}

impl Report {
    pub fn count(&self, s: Status) -> usize {
        self.cases.iter().filter(|r| r.status == s).count()
    }
}

/// The report as JSON: `{"device", "peak_gbps"?, "peak"? (what was measured), "cases": [{op,
/// quant, shape, backend, nmse, max_nmse, status, note, gbps?, peak_fraction?}]}`.
pub fn to_json(report: &Report) -> String {
    use serde_json::{json, Value};
    let cases: Vec<Value> = report
        .cases
        .iter()
        .map(|r| {
            let mut v = json!({
                "op": r.op,
                "quant": r.quant,
                "shape": r.shape,
                "backend": r.backend,
                "nmse": r.nmse.filter(|x| x.is_finite()),
                "max_nmse": r.max_nmse,
                "status": r.status.as_str(),
            });
            if !r.note.is_empty() {
                v["note"] = json!(r.note);
            }
            if let Some(g) = r.gbps {
                v["gbps"] = json!(g);
            }
            if let Some(f) = r.peak_fraction {
                v["peak_fraction"] = json!(f);
            }
            v
        })
        .collect();
    json!({
        "device": report.device,
        "peak_gbps": report.peak.as_ref().map(|p| p.gbps),
        "peak": report.peak.as_ref().map(|p| p.what.clone()),
        "cases": cases,
    })
    .to_string()
}

/// The report as a table.
pub fn table(report: &Report) -> String {
    let results = &report.cases;
    let mut s = format!("device: {}\n", report.device);
    if let Some(p) = &report.peak {
        s += &format!("peak bandwidth: {:.1} GB/s ({})\n", p.gbps, p.what);
    }
    s += &format!(
        "{:<11} {:<10} {:<46} {:>10} {:>8} {:<5} {}\n",
        "op", "quant", "shape", "nmse", "max", "", "note"
    );
    for r in results {
        let nmse = r.nmse.map_or("-".to_string(), |e| format!("{e:.2e}"));
        let mut note = r.note.clone();
        if let Some(g) = r.gbps {
            note = format!("{g:.1} GB/s");
            if let Some(f) = r.peak_fraction {
                note += &format!(" ({:.0}% of peak)", 100.0 * f);
            }
        }
        s += &format!(
            "{:<11} {:<10} {:<46} {:>10} {:>8.0e} {:<5} {}\n",
            r.op,
            r.quant,
            r.shape,
            nmse,
            r.max_nmse,
            r.status.as_str(),
            note
        );
    }
    s
}
