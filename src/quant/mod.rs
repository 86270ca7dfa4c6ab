//! ggml tensor types: the id table of the GGUF format (block size and bytes per block for every
//! type a GGUF file may name), and the CPU reference dequantizers for every format the engine
//! computes with (one file per format or family, layouts exactly as ggml's `ggml-common.h`):
//! - F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K, which also have llama.cpp's reference
//!   quantizers;
//! - Q4_1, Q5_0, Q5_1 (legacy.rs), Q2_K, Q3_K (q2_k.rs), IQ4_NL, IQ4_XS (iq4.rs), IQ3_XXS,
//!   IQ3_S (iq3.rs), IQ2_XXS, IQ2_XS, IQ2_S (iq2.rs), IQ1_S, IQ1_M (iq1.rs), MXFP4, NVFP4
//!   (fp4.rs), read only: synth writes them as random valid blocks, llama.cpp's quantizer makes
//!   the real ones. Their lookup tables are in grids.rs (generated from gguf-py).

mod block;
mod float;
mod fp4;
pub mod grids;
mod iq1;
mod iq2;
mod iq3;
mod iq4;
mod kquant;
mod legacy;
mod q2_k;
pub(crate) use kquant::pack_scale_min_k4;
mod q4_0;
mod q4_k;
mod q5_k;
mod q6_k;
mod q8_0;
mod q8_k;

pub use block::QuantBlock;
pub use float::{bf16_to_f32, f32_to_bf16};
pub use fp4::{e8m0_half, ue4m3_half};
pub use q4_0::{BlockQ4_0, QK4_0};
pub use q4_k::BlockQ4K;
pub use q5_k::BlockQ5K;
pub use q6_k::BlockQ6K;
pub use q8_0::{BlockQ8_0, QK8_0};
pub use q8_k::BlockQ8K;

use crate::error::{Error, Result};
use block::{dequantize_blocks, quantize_blocks};

/// A ggml type id as stored in GGUF tensor infos. Ids 4, 5, 31-33 and 36-38 were removed from
/// ggml and are rejected as unknown.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    IQ2XXS,
    IQ2XS,
    IQ3XXS,
    IQ1S,
    IQ4NL,
    IQ3S,
    IQ2S,
    IQ4XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
}

/// Elements per block for the K-quants (ggml's QK_K).
pub const QK_K: usize = 256;

/// (type, ggml id, name, elements per block, bytes per block). The single source of truth;
/// `tests/fixtures/quant/type_sizes.json` (written by the gguf Python package) is checked
/// against it.
const TYPE_TABLE: [(GgmlType, u32, &str, usize, usize); 34] = [
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "Q8_1", 32, 36),
    (GgmlType::Q2K, 10, "Q2_K", QK_K, 84),
    (GgmlType::Q3K, 11, "Q3_K", QK_K, 110),
    (GgmlType::Q4K, 12, "Q4_K", QK_K, 144),
    (GgmlType::Q5K, 13, "Q5_K", QK_K, 176),
    (GgmlType::Q6K, 14, "Q6_K", QK_K, 210),
    (GgmlType::Q8K, 15, "Q8_K", QK_K, 292),
    (GgmlType::IQ2XXS, 16, "IQ2_XXS", QK_K, 66),
    (GgmlType::IQ2XS, 17, "IQ2_XS", QK_K, 74),
    (GgmlType::IQ3XXS, 18, "IQ3_XXS", QK_K, 98),
    (GgmlType::IQ1S, 19, "IQ1_S", QK_K, 50),
    (GgmlType::IQ4NL, 20, "IQ4_NL", 32, 18),
    (GgmlType::IQ3S, 21, "IQ3_S", QK_K, 110),
    (GgmlType::IQ2S, 22, "IQ2_S", QK_K, 82),
    (GgmlType::IQ4XS, 23, "IQ4_XS", QK_K, 136),
    (GgmlType::I8, 24, "I8", 1, 1),
    (GgmlType::I16, 25, "I16", 1, 2),
    (GgmlType::I32, 26, "I32", 1, 4),
    (GgmlType::I64, 27, "I64", 1, 8),
    (GgmlType::F64, 28, "F64", 1, 8),
    (GgmlType::IQ1M, 29, "IQ1_M", QK_K, 56),
    (GgmlType::BF16, 30, "BF16", 1, 2),
    (GgmlType::TQ1_0, 34, "TQ1_0", QK_K, 54),
    (GgmlType::TQ2_0, 35, "TQ2_0", QK_K, 66),
    (GgmlType::MXFP4, 39, "MXFP4", 32, 17),
    (GgmlType::NVFP4, 40, "NVFP4", 64, 36),
    (GgmlType::Q1_0, 41, "Q1_0", 128, 18),
];

impl GgmlType {
    fn row(self) -> &'static (GgmlType, u32, &'static str, usize, usize) {
        let row = TYPE_TABLE.iter().find(|r| r.0 == self);
        row.expect("every GgmlType variant has a TYPE_TABLE row")
    }

    pub fn from_id(id: u32) -> Option<GgmlType> {
        TYPE_TABLE.iter().find(|r| r.1 == id).map(|r| r.0)
    }

    pub fn from_name(name: &str) -> Option<GgmlType> {
        TYPE_TABLE.iter().find(|r| r.2.eq_ignore_ascii_case(name)).map(|r| r.0)
    }

    pub fn all() -> impl Iterator<Item = GgmlType> {
        TYPE_TABLE.iter().map(|r| r.0)
    }

    pub fn id(self) -> u32 {
        self.row().1
    }

    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// Elements per block (1 for plain types).
    pub fn block_elems(self) -> usize {
        self.row().3
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.row().4
    }

    /// Whether the engine computes with this type (the rest can be inspected, not run): the
    /// types with a codec.
    pub fn is_supported(self) -> bool {
        CODECS.iter().any(|c| c.ty == self)
    }

    /// Every type the engine computes with, in table order.
    pub fn supported() -> impl Iterator<Item = GgmlType> {
        GgmlType::all().filter(|t| t.is_supported())
    }

    /// Bytes of a row of `n_elems` elements; None when `n_elems` is not a whole number of
    /// blocks or the size overflows.
    pub fn row_bytes(self, n_elems: u64) -> Option<u64> {
        let block_elems = self.block_elems() as u64;
        if !n_elems.is_multiple_of(block_elems) {
            return None;
        }
        (n_elems / block_elems).checked_mul(self.block_bytes() as u64)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Check that `bytes` holds exactly `n_elems` elements of `ty`.
pub fn check_len(ty: GgmlType, bytes: usize, n_elems: usize) -> Result<()> {
    let want = ty.row_bytes(n_elems as u64);
    if want != Some(bytes as u64) {
        return Err(Error::QuantLength {
            ty: ty.name().to_string(),
            len: bytes,
            reason: format!("want {want:?} bytes for {n_elems} elements"),
        });
    }
    Ok(())
}

/// How one computable type turns its bytes into f32 and back. The one dispatch table of the
/// module (`GgmlType::is_supported` is "has a row here").
struct Codec {
    ty: GgmlType,
    dequantize: Dequant,
    /// llama.cpp's reference quantizer, for the types that have one here.
    quantize: Option<QuantizeFn>,
}

/// A quantizer: floats in, whole blocks out.
type QuantizeFn = fn(&[f32], &mut [u8]);

/// A dequantizer over a whole buffer, or over one block (`block_bytes` in, `block_elems` out).
enum Dequant {
    Whole(fn(&[u8], &mut [f32])),
    Block(fn(&[u8], &mut [f32])),
}

const fn whole(ty: GgmlType, d: fn(&[u8], &mut [f32]), q: QuantizeFn) -> Codec {
    Codec { ty, dequantize: Dequant::Whole(d), quantize: Some(q) }
}

const fn blocks<B: QuantBlock>(ty: GgmlType) -> Codec {
    whole(ty, dequantize_blocks::<B>, quantize_blocks::<B>)
}

const fn read_only(ty: GgmlType, d: fn(&[u8], &mut [f32])) -> Codec {
    Codec { ty, dequantize: Dequant::Block(d), quantize: None }
}

const CODECS: [Codec; 24] = [
    whole(GgmlType::F32, float::dequantize_f32, float::quantize_f32),
    whole(GgmlType::F16, float::dequantize_f16, float::quantize_f16),
    whole(GgmlType::BF16, float::dequantize_bf16, float::quantize_bf16),
    blocks::<BlockQ8_0>(GgmlType::Q8_0),
    blocks::<BlockQ4_0>(GgmlType::Q4_0),
    blocks::<BlockQ4K>(GgmlType::Q4K),
    blocks::<BlockQ5K>(GgmlType::Q5K),
    blocks::<BlockQ6K>(GgmlType::Q6K),
    read_only(GgmlType::Q4_1, legacy::dequantize_q4_1),
    read_only(GgmlType::Q5_0, legacy::dequantize_q5_0),
    read_only(GgmlType::Q5_1, legacy::dequantize_q5_1),
    read_only(GgmlType::Q2K, q2_k::dequantize_q2_k),
    read_only(GgmlType::Q3K, q2_k::dequantize_q3_k),
    read_only(GgmlType::IQ4NL, iq4::dequantize_iq4_nl),
    read_only(GgmlType::IQ4XS, iq4::dequantize_iq4_xs),
    read_only(GgmlType::IQ3XXS, iq3::dequantize_iq3_xxs),
    read_only(GgmlType::IQ3S, iq3::dequantize_iq3_s),
    read_only(GgmlType::IQ2XXS, iq2::dequantize_iq2_xxs),
    read_only(GgmlType::IQ2XS, iq2::dequantize_iq2_xs),
    read_only(GgmlType::IQ2S, iq2::dequantize_iq2_s),
    read_only(GgmlType::IQ1S, iq1::dequantize_iq1_s),
    read_only(GgmlType::IQ1M, iq1::dequantize_iq1_m),
    read_only(GgmlType::MXFP4, fp4::dequantize_mxfp4),
    read_only(GgmlType::NVFP4, fp4::dequantize_nvfp4),
];

fn codec(ty: GgmlType, op: &str) -> Result<&'static Codec> {
    CODECS.iter().find(|c| c.ty == ty).ok_or_else(|| Error::UnsupportedType {
        name: format!("<{op} buffer>"),
        ty: ty.name().to_string(),
    })
}

/// Expand `src` (whole blocks of `ty`) into `dst.len()` floats, bit for bit as ggml's
/// `dequantize_row_*`. Errors: `QuantLength` when `src` does not hold exactly `dst.len()`
/// elements, `UnsupportedType` for a type the engine does not compute with.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    check_len(ty, src.len(), dst.len())?;
    match codec(ty, "dequantize")?.dequantize {
        Dequant::Whole(f) => f(src, dst),
        Dequant::Block(f) => {
            let (bytes, elems) = (ty.block_bytes(), ty.block_elems());
            for (b, y) in src.chunks_exact(bytes).zip(dst.chunks_exact_mut(elems)) {
                f(b, y);
            }
        }
    }
    Ok(())
}

/// Quantize `src` into `dst` (whole blocks of `ty`) with llama.cpp's reference quantizers
/// (`quantize_row_*_ref`). Errors as `dequantize`, and `UnsupportedType` for a type that is
/// read only here (`has_quantizer`).
pub fn quantize(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    check_len(ty, dst.len(), src.len())?;
    let quantize = codec(ty, "quantize")?.quantize.ok_or_else(|| Error::UnsupportedType {
        name: "<quantize buffer: no quantizer>".into(),
        ty: ty.name().to_string(),
    })?;
    quantize(src, dst);
    Ok(())
}

/// Whether `quantize` can write `ty`.
pub fn has_quantizer(ty: GgmlType) -> bool {
    CODECS.iter().any(|c| c.ty == ty && c.quantize.is_some())
}
