//! Lossless, float-aware checkpoint compression.
//!
//! Floats (bf16, fp16, fp32) are split into an entropy-coded head (exponent plus the top
//! mantissa bits) and a near-random remainder; other dtypes take a zstd path. Tensors are cut
//! into ~1 MiB chunks that encode and decode in parallel, each with xxh3 checksums of its
//! stored and decoded bytes, inside a versioned container (see `format`).

pub mod atomic;
pub mod buffer_pool;
pub mod chunk;
pub mod delta;
mod delta_bits;
pub mod delta_pack;
#[cfg(target_arch = "x86_64")]
mod delta_pack_avx512;
pub mod delta_quad;
#[cfg(target_arch = "x86_64")]
mod delta_quad_avx512;
pub mod dtype;
pub mod error;
pub mod float;
#[cfg(target_arch = "x86_64")]
mod float_avx2;
#[cfg(target_arch = "x86_64")]
mod float_avx512;
pub mod format;
#[cfg(target_arch = "x86_64")]
mod head_sample_avx512;
pub mod huffman;
pub mod parallel;
pub mod rans;
#[cfg(target_arch = "x86_64")]
mod rans_avx2;
pub mod reader;
pub mod safetensors;
mod scratch;
pub mod writer;
#[cfg(target_arch = "x86_64")]
mod xxh3_avx512;

pub use chunk::{EncodeOptions, Encoding};
pub use dtype::DType;
pub use error::{Error, Result};
pub use format::BaseRef;
pub use format::{Index, TensorInfo};
pub use reader::Reader;
pub use writer::{
    write_bytes, write_file, BaseId, BaseTensors, DeltaBase, FileExtras, TensorSource,
};
