//! Approximate distances of 32 coded vectors at once from a query's table
//! ([`super::codebook::Table`]): the 4-bit codes index 16-entry tables held in
//! a register, one byte shuffle scoring 16 vectors in one subspace (FAISS'
//! "fast scan", ScaNN's LUT16). A node's neighbours are stored in this layout
//! beside the node, so expanding a node reads its neighbours' codes in one
//! sequential run instead of one random vector each.
//!
//! Layout of a group of [`GROUP`] vectors, per subspace pair `p` (32 bytes):
//! byte `b < 16` holds vector `b`'s code of subspace `2p` in its low nibble
//! and vector `b + 16`'s in its high nibble; byte `16 + b` the same for
//! subspace `2p + 1`. This matches the table's layout, so one 256-bit shuffle
//! looks up both subspaces of a pair.

/// Vectors scored together.
pub(crate) const GROUP: usize = 32;

/// Bytes of one group's codes.
pub(crate) fn group_bytes(pairs: usize) -> usize {
    pairs * 32
}

/// Writes a group's codes: `codes(i)` is vector `i`'s code per subspace, or
/// `None` past the last vector (coded as zeros, scored and ignored).
pub(crate) fn pack_group<'a>(
    pairs: usize,
    codes: impl Fn(usize) -> Option<&'a [u8]>,
    out: &mut [u8],
) {
    // Byte by byte, each written once: a shard's load packs every group.
    let vectors: [Option<&[u8]>; GROUP] = std::array::from_fn(&codes);
    let code = |i: usize, s: usize| -> u8 {
        vectors[i].and_then(|c| c.get(s)).copied().unwrap_or(0) & 0x0f
    };
    for (p, chunk) in out[..group_bytes(pairs)].chunks_exact_mut(32).enumerate() {
        for half in 0..2 {
            let s = 2 * p + half;
            for byte in 0..16 {
                chunk[half * 16 + byte] = code(byte, s) | code(byte + 16, s) << 4;
            }
        }
    }
}

/// The approximate distances of a group's 32 vectors into `out`.
#[allow(unsafe_code)]
pub(crate) fn scan(codes: &[u8], table: &[u8], pairs: usize, out: &mut [u16; GROUP]) {
    assert!(codes.len() >= group_bytes(pairs) && table.len() >= group_bytes(pairs));
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked just above), and both slices hold
        // `pairs * 32` bytes (asserted), which is all the kernel reads.
        unsafe { scan_avx2(codes.as_ptr(), table.as_ptr(), pairs, out) };
        return;
    }
    scan_scalar(codes, table, pairs, out);
}

/// The portable kernel, and the reference the SIMD one is tested against.
pub(crate) fn scan_scalar(codes: &[u8], table: &[u8], pairs: usize, out: &mut [u16; GROUP]) {
    for (i, slot) in out.iter_mut().enumerate() {
        let (byte, shift) = (i % 16, if i < 16 { 0 } else { 4 });
        let mut sum = 0u16;
        for p in 0..pairs {
            let first = (codes[p * 32 + byte] >> shift) & 0x0f;
            let second = (codes[p * 32 + 16 + byte] >> shift) & 0x0f;
            sum += u16::from(table[p * 32 + first as usize]);
            sum += u16::from(table[p * 32 + 16 + second as usize]);
        }
        *slot = sum;
    }
}

/// # Safety
/// Needs AVX2, and `codes` and `table` readable for `pairs * 32` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(unsafe_code)]
unsafe fn scan_avx2(codes: *const u8, table: *const u8, pairs: usize, out: &mut [u16; GROUP]) {
    use std::arch::x86_64::*;
    let nibble = _mm256_set1_epi8(0x0f);
    let low_byte = _mm256_set1_epi16(0x00ff);
    // Sums per 16-bit element: the low half's even and odd bytes (vectors
    // 0..16), the high half's (vectors 16..32); lane 0 subspace 2p, lane 1 2p+1.
    let mut low_even = _mm256_setzero_si256();
    let mut low_odd = _mm256_setzero_si256();
    let mut high_even = _mm256_setzero_si256();
    let mut high_odd = _mm256_setzero_si256();
    for p in 0..pairs {
        // SAFETY: the caller guarantees `pairs * 32` readable bytes.
        let (c, t) = unsafe {
            (
                _mm256_loadu_si256(codes.add(p * 32).cast()),
                _mm256_loadu_si256(table.add(p * 32).cast()),
            )
        };
        let low = _mm256_shuffle_epi8(t, _mm256_and_si256(c, nibble));
        let high = _mm256_shuffle_epi8(t, _mm256_and_si256(_mm256_srli_epi16(c, 4), nibble));
        low_even = _mm256_add_epi16(low_even, _mm256_and_si256(low, low_byte));
        low_odd = _mm256_add_epi16(low_odd, _mm256_srli_epi16(low, 8));
        high_even = _mm256_add_epi16(high_even, _mm256_and_si256(high, low_byte));
        high_odd = _mm256_add_epi16(high_odd, _mm256_srli_epi16(high, 8));
    }
    let fold =
        |v: __m256i| _mm_add_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let (le, lo, he, ho) = (
        fold(low_even),
        fold(low_odd),
        fold(high_even),
        fold(high_odd),
    );
    let out = out.as_mut_ptr().cast::<__m128i>();
    // SAFETY: `out` holds 32 u16 = four 128-bit stores.
    unsafe {
        _mm_storeu_si128(out, _mm_unpacklo_epi16(le, lo));
        _mm_storeu_si128(out.add(1), _mm_unpackhi_epi16(le, lo));
        _mm_storeu_si128(out.add(2), _mm_unpacklo_epi16(he, ho));
        _mm_storeu_si128(out.add(3), _mm_unpackhi_epi16(he, ho));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simd_kernel_agrees_with_the_scalar_one_on_every_layout() {
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        };
        for pairs in [1, 2, 13, 16, 25, 32] {
            let codes: Vec<Vec<u8>> = (0..GROUP)
                .map(|_| (0..pairs * 2).map(|_| next() & 0x0f).collect())
                .collect();
            let table: Vec<u8> = (0..pairs * 32).map(|_| next()).collect();
            let mut packed = vec![0u8; group_bytes(pairs)];
            let present = 29; // a short last group: the rest are padding
            pack_group(pairs, |i| (i < present).then(|| &codes[i][..]), &mut packed);
            let (mut fast, mut slow) = ([0u16; GROUP], [0u16; GROUP]);
            scan(&packed, &table, pairs, &mut fast);
            scan_scalar(&packed, &table, pairs, &mut slow);
            assert_eq!(fast, slow, "pairs {pairs}");
            for (i, code) in codes.iter().enumerate().take(present) {
                let direct: u16 = code
                    .iter()
                    .enumerate()
                    .map(|(s, &c)| u16::from(table[(s / 2) * 32 + (s % 2) * 16 + c as usize]))
                    .sum();
                assert_eq!(slow[i], direct, "pairs {pairs} vector {i}");
            }
        }
    }
}
