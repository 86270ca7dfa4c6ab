//! The CPU quant formats against an independent reference: the `gguf` Python package (llama.cpp's
//! gguf-py), whose outputs `tests/make_quant_fixtures.py` wrote to `tests/fixtures/quant/`.
//! Dequantize must match it bit for bit; so must quantize, for every type the package can
//! quantize. The K-quants (no quantizer in the package) are held to llama.cpp's
//! `test-quantize-fns` error bound instead, and every type to a round-trip RMSE bound.
//! No Python and no network at test time.

use std::collections::BTreeSet;
use std::path::PathBuf;

use rotary::quant::{
    self, BlockQ4K, BlockQ4_0, BlockQ5K, BlockQ6K, BlockQ8_0, GgmlType, QuantBlock,
};
use rotary::Error;

/// The types the engine computes with and quantizes, by their ggml names.
const QUANTIZED: [&str; 8] = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"];

/// The types the engine computes with but only reads (no quantizer here).
const READ_ONLY: [&str; 16] = [
    "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_S", "IQ2_XXS",
    "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M", "MXFP4", "NVFP4",
];

/// Every type the engine computes with.
fn computed() -> impl Iterator<Item = &'static str> {
    QUANTIZED.into_iter().chain(READ_ONLY)
}

/// Types whose quantizer gguf 0.19.0 implements; the manifest must still say so (a fixture
/// silently dropped would otherwise turn a bit-exact check into a bound check).
const PACKAGE_QUANTIZES: [&str; 5] = ["F32", "F16", "BF16", "Q8_0", "Q4_0"];

/// llama.cpp test-quantize-fns: MAX_QUANTIZATION_TOTAL_ERROR (4-bit and up).
const TOTAL_ERROR_MAX: f64 = 0.002;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant")
}

fn fixture(file: &str) -> Vec<u8> {
    let path = fixture_dir().join(file);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run tests/make_quant_fixtures.py)", path.display()))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    assert_eq!(bytes.len() % 4, 0, "f32 fixture length");
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn ty(name: &str) -> GgmlType {
    GgmlType::from_name(name).unwrap_or_else(|| panic!("{name} is not in TYPE_TABLE"))
}

fn manifest() -> serde_json::Value {
    serde_json::from_slice(&fixture("manifest.json")).expect("manifest.json parses")
}

/// Bytes of `n_elems` elements of `ty`.
fn bytes_of(ty: GgmlType, n_elems: usize) -> usize {
    ty.row_bytes(n_elems as u64).expect("whole blocks") as usize
}

/// None when `got` and `want` are equal bit for bit, else where and how they first differ.
fn first_bit_mismatch(got: &[f32], want: &[f32]) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("length {} vs {}", got.len(), want.len()));
    }
    let mismatches = got.iter().zip(want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    let i = got.iter().zip(want).position(|(a, b)| a.to_bits() != b.to_bits())?;
    let (g, w) = (got[i], want[i]);
    Some(format!(
        "{mismatches} of {} differ; first at element {i}: got {g:e} ({:#010x}), \
         want {w:e} ({:#010x})",
        got.len(),
        g.to_bits(),
        w.to_bits()
    ))
}

/// None when the byte strings are equal, else the first differing block and byte.
fn first_byte_mismatch(got: &[u8], want: &[u8], block_bytes: usize) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("length {} vs {}", got.len(), want.len()));
    }
    let mismatches = got.iter().zip(want).filter(|(a, b)| a != b).count();
    let i = got.iter().zip(want).position(|(a, b)| a != b)?;
    Some(format!(
        "{mismatches} bytes differ; first at byte {i} (block {}, offset {}): got {:#04x}, \
         want {:#04x}",
        i / block_bytes,
        i % block_bytes,
        got[i],
        want[i]
    ))
}

#[test]
fn dequantize_matches_gguf_bit_for_bit() {
    let mut failures = Vec::new();
    for name in computed() {
        let src = fixture(&format!("{name}.deq.in.bin"));
        let want = f32s(&fixture(&format!("{name}.deq.out.f32")));
        let mut got = vec![f32::NAN; want.len()];
        quant::dequantize(ty(name), &src, &mut got).expect("dequantize");
        match first_bit_mismatch(&got, &want) {
            Some(why) => failures.push(format!("{name}: {why}")),
            None => println!("{name}: {} elements bit-exact", want.len()),
        }
    }
    assert!(failures.is_empty(), "dequantize differs from gguf:\n{}", failures.join("\n"));
}

#[test]
fn quantize_matches_gguf_bit_for_bit() {
    let manifest = manifest();
    let mut failures = Vec::new();
    let mut checked = BTreeSet::new();
    for name in QUANTIZED {
        let has_quantize = manifest["types"][name]["quantize"].as_bool();
        if has_quantize != Some(true) {
            println!("{name}: the gguf package has no quantizer (bound-checked instead)");
            continue;
        }
        let x = f32s(&fixture(&format!("{name}.q.in.f32")));
        let want = fixture(&format!("{name}.q.out.bin"));
        let mut got = vec![0xAAu8; bytes_of(ty(name), x.len())];
        quant::quantize(ty(name), &x, &mut got).expect("quantize");
        match first_byte_mismatch(&got, &want, ty(name).block_bytes()) {
            Some(why) => failures.push(format!("{name}: {why}")),
            None => println!("{name}: {} elements quantized bit-exact", x.len()),
        }
        checked.insert(name);
    }
    assert!(failures.is_empty(), "quantize differs from gguf:\n{}", failures.join("\n"));
    for name in PACKAGE_QUANTIZES {
        assert!(checked.contains(name), "{name}: quantize fixture missing from manifest.json");
    }
}

/// llama.cpp test-quantize-fns' synthetic data: 0.1 + 2 cos(i + offset).
fn cos_data(n: usize, offset: f32) -> Vec<f32> {
    (0..n).map(|i| (0.1 + f64::from(2.0 * (i as f32 + offset).cos())) as f32).collect()
}

/// Uniform in [-1, 1) from a fixed-seed xorshift (the test must not depend on a rand crate).
fn uniform_data(n: usize, mut seed: u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// quantize then dequantize `x` as `ty`.
fn round_trip(ty: GgmlType, x: &[f32]) -> Vec<f32> {
    let mut q = vec![0u8; bytes_of(ty, x.len())];
    quant::quantize(ty, x, &mut q).expect("quantize");
    let mut y = vec![0.0f32; x.len()];
    quant::dequantize(ty, &q, &mut y).expect("dequantize");
    y
}

fn sum_sq_err(x: &[f32], y: &[f32]) -> f64 {
    x.iter().zip(y).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum()
}

#[test]
fn quantize_error_within_test_quantize_fns_bound() {
    // test-quantize-fns: 32 * 128 elements, error = sqrt(Σ err²) / n <= 0.002.
    let n = 32 * 128;
    let mut failures = Vec::new();
    for name in QUANTIZED {
        for offset in [0.0f32, 1.0] {
            let x = cos_data(n, offset);
            let y = round_trip(ty(name), &x);
            let total_error = sum_sq_err(&x, &y).sqrt() / n as f64;
            let rmse = (sum_sq_err(&x, &y) / n as f64).sqrt();
            println!("{name:5} offset {offset}: total error {total_error:.3e}, rmse {rmse:.3e}");
            if y.iter().any(|v| v.is_nan()) || total_error.is_nan() || total_error > TOTAL_ERROR_MAX
            {
                failures.push(format!("{name} offset {offset}: total error {total_error:e}"));
            }
        }
    }
    assert!(failures.is_empty(), "over test-quantize-fns bound:\n{}", failures.join("\n"));
}

/// Round-trip RMSE on uniform [-1, 1) data. A rounding step s gives an RMSE of about s/√12;
/// each bound is that estimate for the format on this data (in the comment), times about 1.5.
const ROUND_TRIP_RMSE_MAX: [(&str, f64); 8] = [
    ("F32", 0.0),
    ("F16", 1.6e-4),  // ulp 2^-11 on [0.5, 1), halving below: ≈ 1.07e-4
    ("BF16", 1.3e-3), // ulp 2^-8 likewise: ≈ 8.5e-4
    ("Q8_0", 3.5e-3), // step max|x|/127 ≈ 0.0077 per 32: ≈ 2.2e-3
    ("Q4_0", 5.5e-2), // step max|x|/8 ≈ 0.12: ≈ 3.5e-2
    ("Q4_K", 5.5e-2), // 15 steps over each 32-element range (≈ 1.9): ≈ 3.6e-2
    ("Q5_K", 2.7e-2), // 31 steps over that range: ≈ 1.8e-2
    ("Q6_K", 1.3e-2), // signed, ≈ 32 steps per max|x| of 16 elements: ≈ 8.5e-3
];

#[test]
fn round_trip_rmse_on_random_data_is_bounded() {
    let mut failures = Vec::new();
    for (name, rmse_max) in ROUND_TRIP_RMSE_MAX {
        let x = uniform_data(64 * 256, 0x9E37_79B9_7F4A_7C15);
        let y = round_trip(ty(name), &x);
        let rmse = (sum_sq_err(&x, &y) / x.len() as f64).sqrt();
        println!("{name:5} uniform[-1,1): rmse {rmse:.3e} (max {rmse_max:.1e})");
        if rmse.is_nan() || rmse > rmse_max {
            failures.push(format!("{name}: rmse {rmse:e} > {rmse_max:e}"));
        }
    }
    assert!(failures.is_empty(), "round-trip RMSE too high:\n{}", failures.join("\n"));
}

#[test]
fn type_sizes_match_gguf_package() {
    let sizes: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&fixture("type_sizes.json")).expect("type_sizes.json parses");
    let row = |name: &str| -> Option<[u64; 3]> {
        let v = sizes.get(name)?.as_array()?;
        let n = |i: usize| v.get(i).and_then(|x| x.as_u64()).expect("[id, elems, bytes]");
        Some([n(0), n(1), n(2)])
    };
    for ty in GgmlType::all() {
        let ours = [u64::from(ty.id()), ty.block_elems() as u64, ty.block_bytes() as u64];
        let theirs = row(ty.name()).unwrap_or_else(|| panic!("{ty}: not in type_sizes.json"));
        if ty == GgmlType::Q8_1 {
            // gguf-py still lists the old float layout (4 + 4 + 32); ggml-common.h's
            // block_q8_1 is two f16 + 32 quants (static_assert == 36). Q8_1 never appears in
            // GGUF files. If the package changes, look again.
            assert_eq!(theirs, [9, 32, 40], "Q8_1 in gguf-py changed: recheck TYPE_TABLE");
            assert_eq!(ours, [9, 32, 36]);
            continue;
        }
        assert_eq!(ours, theirs, "{ty}: [id, block elems, block bytes]");
        assert_eq!(GgmlType::from_id(ty.id()), Some(ty), "{ty}: from_id");
    }
    for (name, v) in &sizes {
        let id = v[0].as_u64().expect("id") as u32;
        match GgmlType::from_id(id) {
            Some(ty) => assert_eq!(ty.name(), name, "id {id} names"),
            None => println!("{name} (id {id}) is known to gguf, not to TYPE_TABLE"),
        }
    }
}

#[test]
fn block_structs_match_type_table() {
    let blocks = [
        ("Q8_0", BlockQ8_0::ELEMS, BlockQ8_0::BYTES),
        ("Q4_0", BlockQ4_0::ELEMS, BlockQ4_0::BYTES),
        ("Q4_K", BlockQ4K::ELEMS, BlockQ4K::BYTES),
        ("Q5_K", BlockQ5K::ELEMS, BlockQ5K::BYTES),
        ("Q6_K", BlockQ6K::ELEMS, BlockQ6K::BYTES),
    ];
    for (name, elems, bytes) in blocks {
        assert_eq!((elems, bytes), (ty(name).block_elems(), ty(name).block_bytes()), "{name}");
    }
}

/// read() then write() reproduces every byte: no field is dropped or misplaced.
fn read_write_round_trip<B: QuantBlock>(raw: &[u8]) {
    for block in raw.chunks_exact(B::BYTES) {
        let mut out = vec![0u8; B::BYTES];
        B::read(block).write(&mut out);
        assert_eq!(out, block);
    }
}

#[test]
fn block_read_write_round_trips_fixture_bytes() {
    read_write_round_trip::<BlockQ8_0>(&fixture("Q8_0.deq.in.bin"));
    read_write_round_trip::<BlockQ4_0>(&fixture("Q4_0.deq.in.bin"));
    read_write_round_trip::<BlockQ4K>(&fixture("Q4_K.deq.in.bin"));
    read_write_round_trip::<BlockQ5K>(&fixture("Q5_K.deq.in.bin"));
    read_write_round_trip::<BlockQ6K>(&fixture("Q6_K.deq.in.bin"));
}

#[test]
fn wrong_lengths_return_quant_length_error() {
    for name in computed() {
        let ty = ty(name);
        let n = 2 * ty.block_elems();
        let good = bytes_of(ty, n);
        let bad_lengths = [(good - 1, n), (good + 1, n), (good, n + 1), (good, n - 1), (0, n)];
        for (n_bytes, n_elems) in bad_lengths {
            let mut bytes = vec![0u8; n_bytes];
            let mut y = vec![0.5f32; n_elems];
            let err = quant::dequantize(ty, &bytes, &mut y).expect_err("dequantize bad length");
            assert!(matches!(err, Error::QuantLength { .. }), "{name}: {err}");
            let err = quant::quantize(ty, &y, &mut bytes).expect_err("quantize bad length");
            assert!(matches!(err, Error::QuantLength { .. }), "{name}: {err}");
        }
        // Empty buffers are zero whole blocks.
        quant::dequantize(ty, &[], &mut []).expect("empty dequantize");
        assert_eq!(quant::quantize(ty, &[], &mut []).is_ok(), quant::has_quantizer(ty), "{name}");
    }
}

#[test]
fn unsupported_types_return_error_and_match_is_supported() {
    for ty in GgmlType::all() {
        let n = ty.block_elems();
        let mut bytes = vec![0u8; ty.block_bytes()];
        let mut y = vec![0.0f32; n];
        let deq = quant::dequantize(ty, &bytes, &mut y);
        let q = quant::quantize(ty, &vec![0.0f32; n], &mut bytes);
        if ty.is_supported() {
            assert!(deq.is_ok(), "{ty}: supported but {deq:?}");
            assert!(computed().any(|n| n == ty.name()), "{ty}: supported but not tested here");
            let quantized = QUANTIZED.contains(&ty.name());
            assert_eq!(quant::has_quantizer(ty), quantized, "{ty}: has_quantizer");
            match q {
                Ok(()) => assert!(quantized, "{ty}: quantized without a quantizer"),
                Err(e) => {
                    assert!(!quantized, "{ty}: {e}");
                    assert!(matches!(e, Error::UnsupportedType { .. }), "{ty}: {e}");
                }
            }
        } else {
            for err in [deq.expect_err("dequantize"), q.expect_err("quantize")] {
                assert!(matches!(err, Error::UnsupportedType { .. }), "{ty}: {err}");
            }
        }
    }
}

#[test]
fn quantize_survives_non_finite_and_extreme_input() {
    // ggml asserts on some of these (nearest_int's range); we only promise no panic and a
    // result of the right size. Values are not checked.
    let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, -f32::MAX, 1e-45, 0.0];
    for name in QUANTIZED {
        let ty = ty(name);
        let n = 2 * ty.block_elems();
        for special in specials {
            let mut x = uniform_data(n, 7);
            x.iter_mut().step_by(5).for_each(|v| *v = special);
            let mut q = vec![0u8; bytes_of(ty, n)];
            quant::quantize(ty, &x, &mut q).expect("quantize");
            quant::dequantize(ty, &q, &mut x).expect("dequantize");
            let all_special = vec![special; n];
            quant::quantize(ty, &all_special, &mut q).expect("quantize");
        }
    }
}

#[test]
fn read_only_types_dequantize_any_bytes_without_panic() {
    // Every byte pattern is a block: grid indices cover their tables, scales any f16 (NaN and
    // Inf included). Values are not checked, only that nothing panics or reads out of range.
    for name in READ_ONLY {
        let ty = ty(name);
        let n = 4 * ty.block_elems();
        let mut seed = 0x1234_5678_9ABC_DEF1u64 ^ u64::from(ty.id());
        for fill in [None, Some(0x00u8), Some(0xFF)] {
            let bytes: Vec<u8> = (0..bytes_of(ty, n))
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    fill.unwrap_or((seed >> 32) as u8)
                })
                .collect();
            let mut y = vec![0.0f32; n];
            quant::dequantize(ty, &bytes, &mut y).expect("dequantize");
        }
    }
}
