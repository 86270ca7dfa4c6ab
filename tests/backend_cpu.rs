//! The fast CPU backend against the oracle. A table of (weight type, shape, tokens) cases with
//! deterministic inputs (our own xorshift; weights made by `quant::quantize` from random f32, or
//! by `synth::random_matrix` for the types without a quantizer):
//! `cpu` vs `cpu_ref` within NMSE 5e-4 (activations are quantized to 8 bits, which dominates),
//! and within 1e-9 of the exact product with the activations quantized as ggml does (a kernel
//! bug cannot hide under the quantization noise); the scalar kernels vs the SIMD kernels,
//! 1 vs 2 vs 3 threads bit for bit, and Err (never a panic) for what it cannot compute.
//!
//! Throughput (GB/s of weights streamed) is printed, not asserted, by the ignored test
//! `throughput`: `cargo test --release --test backend_cpu -- --ignored --nocapture`.

use std::time::Instant;

use rotary::backend::cpu::{CpuBackend, Simd};
use rotary::backend::cpu_ref::CpuRef;
use rotary::backend::{Backend, Mat, MatJob};
use rotary::quant::{self, BlockQ8K, BlockQ8_0, GgmlType, QuantBlock};
use rotary::Error;

/// The types the engine computes with.
fn types() -> Vec<GgmlType> {
    GgmlType::supported().collect()
}

/// (rows, cols): square and expert-like shapes, plus a row count that leaves a partial task.
const SHAPES: [(usize, usize); 6] =
    [(256, 256), (512, 512), (768, 2048), (2048, 768), (256, 2048), (37, 512)];

const TOKENS: [usize; 3] = [1, 3, 17];

/// The matmul bound of STYLE.md.
const NMSE_MAX: f64 = 5e-4;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Weights [rows, cols] of `ty`, quantized from f32 whose scale varies by row, or synth's
/// random valid blocks where `ty` has no quantizer.
fn weights(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    if !quant::has_quantizer(ty) {
        return rotary::synth::random_matrix(ty, rows, cols, 0.05, seed).unwrap();
    }
    let mut rng = Rng(seed);
    let f: Vec<f32> = (0..rows * cols).map(|i| rng.uniform() * (1 + i / cols % 3) as f32).collect();
    let mut bytes = vec![0u8; ty.row_bytes((rows * cols) as u64).unwrap() as usize];
    quant::quantize(ty, &f, &mut bytes).unwrap();
    bytes
}

/// Activations [n, cols]: uniform with an occasional outlier, as real hidden states have (an
/// outlier coarsens the 8-bit quantization of its whole block, which dominates the NMSE).
fn activations(n: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    (0..n * cols).map(|i| if i % 97 == 5 { 4.0 * rng.uniform() } else { rng.uniform() }).collect()
}

/// What the kernels compute, up to f32 rounding: Σ w·x̂ in f64, w dequantized and x̂ the
/// activations as the backend quantizes them for w's type (ggml's vec_dot_type). [n, rows]
fn expected_exact(w: &Mat, x: &[f32], n: usize) -> Vec<f32> {
    fn round_trip<B: QuantBlock>(x: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        for (x, out) in x.chunks_exact(B::ELEMS).zip(out.chunks_exact_mut(B::ELEMS)) {
            B::quantize(x).dequantize(out);
        }
        out
    }
    // ggml's vec_dot_type by block size: Q8_0 (Q8_1 has the same quants) for the 32- and
    // 64-element formats, Q8_K for the 256-element ones, none for float weights.
    let x_hat = match w.ty.block_elems() {
        1 => x.to_vec(),
        32 | 64 => round_trip::<BlockQ8_0>(x),
        256 => round_trip::<BlockQ8K>(x),
        other => panic!("{}: no activation format for blocks of {other}", w.ty),
    };
    let mut row = vec![0f32; w.cols]; // [cols]
    let mut y = vec![0f32; n * w.rows];
    for i in 0..w.rows {
        quant::dequantize(w.ty, w.row(i), &mut row).unwrap();
        for (t, xt) in x_hat.chunks_exact(w.cols).enumerate() {
            let dot: f64 = row.iter().zip(xt).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
            y[t * w.rows + i] = dot as f32;
        }
    }
    y
}

/// Σ(a-b)² / Σa², in f64; fails on any NaN.
fn nmse(want: &[f32], got: &[f32], what: &str) -> f64 {
    assert_eq!(want.len(), got.len(), "{what}: lengths");
    assert!(!got.iter().chain(want).any(|v| v.is_nan()), "{what}: NaN in the output");
    let err: f64 = want.iter().zip(got).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum();
    let norm: f64 = want.iter().map(|a| f64::from(*a).powi(2)).sum();
    err / norm.max(f64::MIN_POSITIVE)
}

fn matmul(backend: &dyn Backend, w: &Mat, x: &[f32], n: usize) -> Vec<f32> {
    let mut y = vec![f32::NAN; n * w.rows]; // [n, rows]
    backend.matmul(w, x, n, &mut y).unwrap();
    y
}

fn backend(threads: usize, simd: Simd) -> CpuBackend {
    CpuBackend::with_simd(Some(threads), simd).unwrap()
}

/// The NMSE bound against `expected_exact`: only f32 summation order separates them.
const NMSE_EXACT_MAX: f64 = 1e-9;

#[test]
fn matches_cpu_ref() {
    let backends: Vec<CpuBackend> = Simd::available().map(|simd| backend(2, simd)).collect();
    let names: Vec<Simd> = backends.iter().map(|b| b.simd()).collect();
    println!("cpu kernels: {names:?}");
    for simd in Simd::ALL.iter().filter(|s| !names.contains(s)) {
        println!("SKIP {simd:?}: not available on this CPU");
    }
    for ty in types() {
        let (mut worst_ref, mut worst_exact) = (0f64, 0f64);
        for (s, &(rows, cols)) in SHAPES.iter().enumerate() {
            let data = weights(ty, rows, cols, 1 + s as u64);
            let w = Mat::new(ty, rows, cols, &data, "w").unwrap();
            for n in TOKENS {
                let x = activations(n, cols, 100 + n as u64);
                let (want, exact) = (matmul(&CpuRef, &w, &x, n), expected_exact(&w, &x, n));
                for cpu in &backends {
                    let case = format!("{ty} {rows}x{cols} n={n} {:?}", cpu.simd());
                    let got = matmul(cpu, &w, &x, n);
                    let (e_ref, e_exact) = (nmse(&want, &got, &case), nmse(&exact, &got, &case));
                    assert!(e_ref <= NMSE_MAX, "{case}: NMSE vs cpu_ref {e_ref:.3e}");
                    assert!(e_exact <= NMSE_EXACT_MAX, "{case}: NMSE vs exact {e_exact:.3e}");
                    worst_ref = worst_ref.max(e_ref);
                    worst_exact = worst_exact.max(e_exact);
                }
            }
        }
        println!("{ty:>5}: NMSE max vs cpu_ref {worst_ref:.2e}, vs exact {worst_exact:.2e}");
    }
}

#[test]
fn float_rows_of_any_length() {
    // The float kernels step 32 elements at a time; these lengths leave every kind of tail.
    for simd in Simd::available() {
        let cpu = backend(2, simd);
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            for (rows, cols) in [(5, 1), (5, 37), (3, 100), (40, 1000)] {
                let data = weights(ty, rows, cols, 31);
                let w = Mat::new(ty, rows, cols, &data, "w").unwrap();
                let x = activations(3, cols, 32);
                let case = format!("{ty} {rows}x{cols} {simd:?}");
                let e = nmse(&expected_exact(&w, &x, 3), &matmul(&cpu, &w, &x, 3), &case);
                assert!(e <= NMSE_EXACT_MAX, "{case}: NMSE vs exact {e:.3e}");
            }
        }
    }
}

#[test]
fn scalar_and_simd_kernels_agree() {
    let scalar = backend(1, Simd::Scalar);
    for simd in Simd::available().filter(|s| *s != Simd::Scalar) {
        let fast = backend(1, simd);
        for ty in types() {
            let (rows, cols) = (64, 2048);
            let data = weights(ty, rows, cols, 7);
            let w = Mat::new(ty, rows, cols, &data, "w").unwrap();
            let x = activations(3, cols, 8);
            // Same integer sums per block; only the f32 summation order differs.
            let e = nmse(&matmul(&scalar, &w, &x, 3), &matmul(&fast, &w, &x, 3), &ty.to_string());
            assert!(e <= 1e-10, "{ty}: scalar vs {simd:?} NMSE {e:.3e}");
        }
    }
}

#[test]
fn thread_count_does_not_change_bits() {
    for simd in Simd::available() {
        thread_count_does_not_change_bits_for(simd);
    }
}

fn thread_count_does_not_change_bits_for(simd: Simd) {
    let backends: Vec<CpuBackend> = [1, 2, 3].map(|t| backend(t, simd)).into();
    for ty in types() {
        for (rows, cols) in [(768, 2048), (37, 512)] {
            let data = weights(ty, rows, cols, 11);
            let w = Mat::new(ty, rows, cols, &data, "w").unwrap();
            for n in [1, 17] {
                let x = activations(n, cols, 12);
                let one = matmul(&backends[0], &w, &x, n);
                for b in &backends[1..] {
                    let many = matmul(b, &w, &x, n);
                    let same = one.iter().zip(&many).all(|(a, b)| a.to_bits() == b.to_bits());
                    let threads = b.threads();
                    assert!(
                        same,
                        "{ty} {rows}x{cols} n={n} {simd:?}: 1 vs {threads} threads differ"
                    );
                }
            }
        }
    }
}

#[test]
fn tokens_together_match_tokens_alone() {
    // Kernels that take several tokens per pass over a weight row must give, bit for bit, what
    // each token alone gives, whatever the token count (full passes and every remainder; 16
    // and more: AVX-512's 16-token Q4_K kernel over transposed activations, and its remainder;
    // AMX's Q8_0 tiles, 16 rows and up to 16 tokens at a time).
    for simd in Simd::available() {
        let cpu = backend(2, simd);
        let types = [GgmlType::Q4K, GgmlType::Q6K, GgmlType::Q3K, GgmlType::IQ4XS, GgmlType::IQ3S];
        for ty in types.into_iter().chain([GgmlType::Q8_0]) {
            let (rows, cols) = (37, 1024);
            let data = weights(ty, rows, cols, 41);
            let w = Mat::new(ty, rows, cols, &data, "w").unwrap();
            for n in (1..=9).chain([16, 19, 35]) {
                let x = activations(n, cols, 42 + n as u64);
                let together = matmul(&cpu, &w, &x, n);
                for (t, xt) in x.chunks_exact(cols).enumerate() {
                    let alone = matmul(&cpu, &w, xt, 1);
                    let got = &together[t * rows..(t + 1) * rows];
                    let same = alone.iter().zip(got).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{ty} n={n} token {t} {simd:?}: together != alone");
                }
            }
        }
    }
}

#[test]
fn unsupported_types_are_errors() {
    let cpu = backend(2, Simd::detect());
    for ty in GgmlType::all().filter(|t| !t.is_supported()) {
        let (rows, cols) = (4, 256);
        let data = vec![0u8; ty.row_bytes(cols as u64).unwrap() as usize * rows];
        let w = Mat::new(ty, rows, cols, &data, "w").unwrap();
        let mut y = vec![0f32; rows];
        let err = cpu.matmul(&w, &vec![1.0; cols], 1, &mut y).unwrap_err();
        assert!(matches!(err, Error::UnsupportedType { .. }), "{ty}: {err}");
    }
}

#[test]
fn inconsistent_matrices_are_errors() {
    let cpu = backend(2, Simd::detect());
    let data = weights(GgmlType::Q4K, 4, 256, 3);
    let mut y = vec![0f32; 4];
    // Data one block short, and a column count that is not whole blocks.
    let short = Mat { ty: GgmlType::Q4K, rows: 4, cols: 256, data: &data[..data.len() - 144] };
    let ragged = Mat { ty: GgmlType::Q8_0, rows: 4, cols: 100, data: &data[..400] };
    for (w, x) in [(short, vec![1.0; 256]), (ragged, vec![1.0; 100])] {
        let err = cpu.matmul(&w, &x, 1, &mut y).unwrap_err();
        assert!(matches!(err, Error::QuantLength { .. }), "{err}");
    }
}

/// A batch is each of its products alone, bit for bit: products that share an x (an expert's
/// gate and up), mixed weight types (each quantizes x its own way), token counts that leave
/// partial passes, empty products, and one expert's down on another's output.
#[test]
fn a_batch_is_its_products_alone() {
    for simd in Simd::available() {
        let cpu = backend(2, simd);
        let (q4k, q80, f16, iq4) = (GgmlType::Q4K, GgmlType::Q8_0, GgmlType::F16, GgmlType::IQ4XS);
        // (type, rows, cols, tokens, x index): x 0 and 1 are [17, 512]-ish, shared by several.
        let cases = [
            (q4k, 512, 512, 17, 0),
            (q4k, 512, 512, 17, 0),
            (q80, 37, 512, 17, 0),
            (f16, 64, 512, 17, 0),
            (iq4, 256, 512, 5, 1),
            (q4k, 768, 512, 5, 1),
            (q80, 0, 512, 5, 1),
            (q4k, 256, 512, 0, 2),
            // One x read as [16, 512] and as [32, 256]: two layouts of 16-token groups.
            (q4k, 48, 512, 16, 3),
            (q4k, 40, 256, 32, 3),
        ];
        let xs =
            [activations(17, 512, 1), activations(5, 512, 2), Vec::new(), activations(16, 512, 3)];
        let data: Vec<Vec<u8>> = cases
            .iter()
            .enumerate()
            .map(|(i, &(ty, rows, cols, ..))| weights(ty, rows, cols, 10 + i as u64))
            .collect();
        let mats: Vec<Mat> = cases
            .iter()
            .zip(&data)
            .map(|(&(ty, rows, cols, ..), d)| Mat::new(ty, rows, cols, d, "w").unwrap())
            .collect();
        let alone: Vec<Vec<f32>> =
            cases.iter().zip(&mats).map(|(&(.., n, x), w)| matmul(&cpu, w, &xs[x], n)).collect();
        let mut ys: Vec<Vec<f32>> =
            cases.iter().map(|&(_, rows, _, n, _)| vec![f32::NAN; n * rows]).collect();
        let mut jobs: Vec<MatJob> = cases
            .iter()
            .zip(&mats)
            .zip(&mut ys)
            .map(|((&(.., n, x), w), y)| MatJob { w: *w, x: &xs[x], n, y })
            .collect();
        cpu.matmul_batch(&mut jobs).unwrap();
        drop(jobs);
        for (i, (a, b)) in alone.iter().zip(&ys).enumerate() {
            let same = a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same && a.len() == b.len(), "{simd:?} product {i} ({})", cases[i].0);
        }
        // The batch's own default (one matmul each) agrees too, on the reference backend.
        let oracle = CpuRef;
        let mut y0 = vec![0f32; 17 * 512];
        let mut jobs = [MatJob { w: mats[0], x: &xs[0], n: 17, y: &mut y0 }];
        oracle.matmul_batch(&mut jobs).unwrap();
        assert_eq!(y0, matmul(&oracle, &mats[0], &xs[0], 17));
        // A bad product anywhere in the batch is an error, not a panic.
        let bad = Mat { ty: q4k, rows: 2, cols: 512, data: &data[0][..100] };
        let mut y = vec![0f32; 2 * 5];
        let mut jobs = [MatJob { w: bad, x: &xs[1], n: 5, y: &mut y }];
        assert!(cpu.matmul_batch(&mut jobs).is_err());
    }
}

#[test]
fn empty_shapes_are_fine() {
    let cpu = backend(2, Simd::detect());
    let w = Mat::new(GgmlType::Q8_0, 0, 64, &[], "w").unwrap();
    cpu.matmul(&w, &[0.0; 128], 2, &mut []).unwrap();
    let data = weights(GgmlType::Q8_0, 3, 64, 5);
    let w = Mat::new(GgmlType::Q8_0, 3, 64, &data, "w").unwrap();
    cpu.matmul(&w, &[], 0, &mut []).unwrap();
    for ty in types() {
        let w = Mat::new(ty, 3, 0, &[], "w").unwrap();
        let mut y = [f32::NAN; 6];
        cpu.matmul(&w, &[], 2, &mut y).unwrap();
        assert_eq!(y, [0.0; 6], "{ty}: a sum of nothing");
    }
}

#[test]
fn simd_choice_from_env() {
    // The only test that reads the variable (every other one names its kernels).
    std::env::set_var("ROTARY_CPU_SIMD", "off");
    assert_eq!(Simd::from_env().unwrap(), Simd::Scalar);
    std::env::set_var("ROTARY_CPU_SIMD", "bogus");
    assert!(matches!(Simd::from_env(), Err(Error::Usage(_))));
    std::env::remove_var("ROTARY_CPU_SIMD");
    assert_eq!(Simd::from_env().unwrap(), Simd::detect());
    assert_eq!(CpuBackend::new(Some(1)).unwrap().simd(), Simd::detect());
}

/// Seconds per call of `f`, the median of `reps` timed batches of `calls`.
fn seconds_per_call(reps: usize, calls: usize, mut f: impl FnMut(usize)) -> f64 {
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            (0..calls).for_each(&mut f);
            start.elapsed().as_secs_f64() / calls as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[reps / 2]
}

/// Bytes the cold runs cycle through: more than this machine's last-level cache (480 MB here),
/// so every call streams its weights from DRAM, as a decode step does.
const COLD_BYTES: usize = 1 << 30;

/// Microseconds per call and GB/s of weights for `w` at n tokens: hot (one matrix, cache
/// resident) and cold (cycling through copies of it spread over COLD_BYTES).
fn time_matmul(cpu: &CpuBackend, w: &Mat, copies: &[u8], n: usize) -> [(f64, f64); 2] {
    let x = activations(n, w.cols, 22);
    let mut y = vec![0f32; n * w.rows];
    let t_hot = seconds_per_call(7, 100, |_| cpu.matmul(w, &x, n, &mut y).unwrap());
    let n_copies = copies.len() / w.data.len();
    let t_cold = seconds_per_call(5, n_copies, |i| {
        let data = &copies[i * w.data.len()..][..w.data.len()];
        let copy = Mat { data, ..*w };
        cpu.matmul(&copy, &x, n, &mut y).unwrap();
    });
    let gb = w.data.len() as f64 / 1e9;
    [(t_hot * 1e6, gb / t_hot), (t_cold * 1e6, gb / t_cold)]
}

#[test]
#[ignore = "timing: run with --release -- --ignored --nocapture"]
fn throughput() {
    let cases = types()
        .into_iter()
        .map(|ty| (ty, 768, 2048, 1))
        .chain([(GgmlType::Q4K, 2048, 768, 1), (GgmlType::Q4K, 2048, 768, 17)]);
    for (ty, rows, cols, n) in cases {
        let data = weights(ty, rows, cols, 21);
        let w = Mat::new(ty, rows, cols, &data, "w").unwrap();
        let copies: Vec<u8> = data.iter().copied().cycle().take(COLD_BYTES).collect();
        for simd in Simd::available().filter(|s| *s != Simd::Scalar) {
            for threads in [1, 2] {
                let cpu = backend(threads, simd);
                let [(us_hot, gb_hot), (us_cold, gb_cold)] = time_matmul(&cpu, &w, &copies, n);
                let hot = format!("hot {us_hot:6.1} us {gb_hot:5.1} GB/s");
                let cold = format!("cold {us_cold:6.1} us {gb_cold:5.1} GB/s");
                let case = format!("{ty:>5} {rows}x{cols} n={n:<2} {simd:?} threads={threads}");
                println!("{case}: {hot} | {cold}");
            }
        }
    }
    let simd = Simd::detect();
    // Dispatch overhead: small matmuls, where the call itself is much of the time.
    for rows in [64, 128, 256] {
        let data = weights(GgmlType::Q4K, rows, 2048, 23);
        let w = Mat::new(GgmlType::Q4K, rows, 2048, &data, "w").unwrap();
        let x = activations(1, 2048, 24);
        let mut y = vec![0f32; rows];
        for threads in [1, 2] {
            let cpu = backend(threads, simd);
            let t = seconds_per_call(9, 2000, |_| cpu.matmul(&w, &x, 1, &mut y).unwrap());
            println!("Q4_K {rows}x2048 n=1 threads={threads}: {:.2} us per call", t * 1e6);
        }
    }
}

/// Kernel speed, scalar vs SIMD: GB/s of weights for a 2048x2048 gemv on 1 thread, hot (the
/// matrix stays in the last-level cache: the kernel's own rate) and cold (streamed from DRAM),
/// each the best of several batches (other load only ever slows a batch down).
/// `ROTARY_SPEED_TYPES=Q3_K,IQ4_XS` picks the types (default: every quantized one),
/// `ROTARY_SPEED_TOKENS=n` the tokens per call (default 1: decode).
#[test]
#[ignore = "timing: run with --release -- --ignored --nocapture"]
fn kernel_speed() {
    let wanted = std::env::var("ROTARY_SPEED_TYPES").unwrap_or_default();
    let picked = |ty: &GgmlType| {
        wanted.is_empty() || wanted.split(',').any(|name| name.eq_ignore_ascii_case(ty.name()))
    };
    let n: usize = std::env::var("ROTARY_SPEED_TOKENS").map_or(1, |v| v.parse().unwrap());
    let (rows, cols) = (2048, 2048);
    let x = activations(n, cols, 26);
    let mut y = vec![0f32; n * rows];
    for ty in types().into_iter().filter(|t| t.block_elems() > 1).filter(picked) {
        let data = weights(ty, rows, cols, 25);
        let w = Mat::new(ty, rows, cols, &data, "w").unwrap();
        let copies: Vec<u8> = data.iter().copied().cycle().take(COLD_BYTES / 4).collect();
        let n_copies = copies.len() / data.len();
        let mut line = format!("{ty:>7} {rows}x{cols} n={n} threads=1:");
        for simd in Simd::available() {
            let cpu = backend(1, simd);
            let hot = best_seconds_per_call(15, 10, |_| cpu.matmul(&w, &x, n, &mut y).unwrap());
            let cold = best_seconds_per_call(3, n_copies, |i| {
                let copy = Mat { data: &copies[i * data.len()..][..data.len()], ..w };
                cpu.matmul(&copy, &x, n, &mut y).unwrap();
            });
            let gb = data.len() as f64 / 1e9;
            line += &format!("  {simd:?} hot {:5.2} cold {:5.2} GB/s", gb / hot, gb / cold);
        }
        println!("{line}");
    }
}

/// Prompt-processing speed: GMAC/s of many-token products on 2 threads, hot, at the `small`
/// preset's shapes (an expert's gate with its ~64 tokens, an attention projection over a 512
/// prompt, an expert's down) and the 30B-A3B expert's.
#[test]
#[ignore = "timing: run with --release -- --ignored --nocapture"]
fn prefill_speed() {
    let cpu = backend(2, Simd::detect());
    for (ty, rows, cols, n) in [
        (GgmlType::Q4K, 512, 1024, 64),
        (GgmlType::Q4K, 1024, 1024, 512),
        (GgmlType::Q6K, 1024, 512, 64),
        (GgmlType::Q4K, 768, 2048, 64),
        (GgmlType::Q6K, 2048, 768, 64),
    ] {
        let data = weights(ty, rows, cols, 27);
        let w = Mat::new(ty, rows, cols, &data, "w").unwrap();
        let x = activations(n, cols, 28);
        let mut y = vec![0f32; n * rows];
        let calls = (2_000_000_000 / (rows * cols * n)).max(1);
        let t = best_seconds_per_call(5, calls, |_| cpu.matmul(&w, &x, n, &mut y).unwrap());
        let gmac = (rows * cols * n) as f64 / t / 1e9;
        println!("{ty:>5} {rows}x{cols} n={n:<3} threads=2: {:8.1} us {gmac:6.1} GMAC/s", t * 1e6);
    }
}

/// Seconds per call of `f`, the fastest of `reps` timed batches of `calls`.
fn best_seconds_per_call(reps: usize, calls: usize, mut f: impl FnMut(usize)) -> f64 {
    (0..reps)
        .map(|_| {
            let start = Instant::now();
            (0..calls).for_each(&mut f);
            start.elapsed().as_secs_f64() / calls as f64
        })
        .fold(f64::INFINITY, f64::min)
}
