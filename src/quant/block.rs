//! The shape every ggml block format shares: a fixed number of elements packed into a fixed
//! number of bytes. Blocks are parsed from `&[u8]` field by field with `from_le_bytes` (GGUF data
//! is little-endian and not aligned for any struct), so no unsafe casts are needed anywhere.

use half::f16;

/// One ggml quant block (layouts as ggml's `ggml-common.h`).
pub trait QuantBlock: Sized {
    /// Elements per block.
    const ELEMS: usize;
    /// Bytes per block.
    const BYTES: usize;
    /// Parse one block from exactly `BYTES` bytes.
    fn read(bytes: &[u8]) -> Self;
    /// Serialise into exactly `BYTES` bytes.
    fn write(&self, out: &mut [u8]);
    /// Expand into exactly `ELEMS` floats, with ggml's `dequantize_row_*` arithmetic.
    fn dequantize(&self, y: &mut [f32]);
    /// Quantize exactly `ELEMS` floats with ggml's reference quantizer (`quantize_row_*_ref`).
    fn quantize(x: &[f32]) -> Self;
}

/// Dequantize whole blocks; the caller has checked that `src` holds `dst.len()` elements.
pub(super) fn dequantize_blocks<B: QuantBlock>(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len() / B::BYTES * B::ELEMS, dst.len(), "lengths checked by the caller");
    for (bytes, y) in src.chunks_exact(B::BYTES).zip(dst.chunks_exact_mut(B::ELEMS)) {
        B::read(bytes).dequantize(y);
    }
}

/// Quantize whole blocks; the caller has checked that `dst` holds `src.len()` elements.
pub(super) fn quantize_blocks<B: QuantBlock>(src: &[f32], dst: &mut [u8]) {
    assert_eq!(dst.len() / B::BYTES * B::ELEMS, src.len(), "lengths checked by the caller");
    for (x, bytes) in src.chunks_exact(B::ELEMS).zip(dst.chunks_exact_mut(B::BYTES)) {
        B::quantize(x).write(bytes);
    }
}

/// The little-endian f16 at `bytes[at..at + 2]`.
pub(super) fn read_f16(bytes: &[u8], at: usize) -> f16 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

/// Store `value` little-endian at `out[at..at + 2]`.
pub(super) fn write_f16(out: &mut [u8], at: usize, value: f16) {
    out[at..at + 2].copy_from_slice(&value.to_bits().to_le_bytes());
}

/// The little-endian f16 at `bytes[at..at + 2]`, widened to f32.
pub(super) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    read_f16(bytes, at).to_f32()
}
