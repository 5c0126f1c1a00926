//! LEB128 varints, the compact integers of the user history file
//! (`crate::user_history`) and of the gateway's session tokens: 7 bits a byte,
//! low bits first, the high bit set on every byte but the last; and
//! [`Cursor`], the bounded reader both decoders walk their bytes with.

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VarintError {
    /// The bytes end inside the number.
    #[error("the bytes end inside a number")]
    Truncated,
    /// The number does not fit in 64 bits.
    #[error("a number past u64::MAX")]
    Overflow,
    /// A count claims more entries than the bytes left could hold
    /// ([`Cursor::count`]; never from [`read_varint`]).
    #[error("{count} entries claimed in the {left} bytes left")]
    TooMany {
        /// The count read.
        count: u64,
        /// The bytes after it.
        left: usize,
    },
}

/// A position in bytes that a decoder reads forward, every read bounded by
/// what is left: a count claiming more than the bytes could hold is refused
/// before anything is allocated for it.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// Reads `bytes` from offset `at`.
    pub fn new(bytes: &'a [u8], at: usize) -> Self {
        Self { bytes, at }
    }

    /// The offset of the next read.
    pub fn at(&self) -> usize {
        self.at
    }

    /// Whether every byte was read.
    pub fn is_done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    /// The next `length` bytes.
    pub fn take(&mut self, length: usize) -> Result<&'a [u8], VarintError> {
        let taken = self
            .bytes
            .get(self.at..self.at.saturating_add(length))
            .ok_or(VarintError::Truncated)?;
        self.at += length;
        Ok(taken)
    }

    /// The next `N` bytes.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], VarintError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// The next varint.
    pub fn varint(&mut self) -> Result<u64, VarintError> {
        read_varint(self.bytes, &mut self.at)
    }

    /// The next varint as a count of entries of at least `each` bytes, no
    /// more than the bytes left could hold.
    pub fn count(&mut self, each: usize) -> Result<usize, VarintError> {
        let count = self.varint()?;
        let left = self.bytes.len().saturating_sub(self.at);
        usize::try_from(count)
            .ok()
            .filter(|count| count.saturating_mul(each) <= left)
            .ok_or(VarintError::TooMany { count, left })
    }
}

/// Appends `value`.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads the number at `*at` in `bytes` and moves `*at` past it.
pub fn read_varint(bytes: &[u8], at: &mut usize) -> Result<u64, VarintError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or(VarintError::Truncated)?;
        *at += 1;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return Err(VarintError::Overflow);
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(VarintError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_number_round_trips(value in any::<u64>()) {
            let mut bytes = Vec::new();
            put_varint(&mut bytes, value);
            let mut at = 0;
            prop_assert_eq!(read_varint(&bytes, &mut at), Ok(value));
            prop_assert_eq!(at, bytes.len());
            prop_assert!(bytes.len() <= 10);
        }
    }

    #[test]
    fn cut_and_oversized_numbers_are_refused() {
        assert_eq!(read_varint(&[0x80], &mut 0), Err(VarintError::Truncated));
        let mut past = vec![0xff; 9];
        past.push(0x02);
        assert_eq!(read_varint(&past, &mut 0), Err(VarintError::Overflow));
        assert_eq!(read_varint(&[0xff; 11], &mut 0), Err(VarintError::Overflow));
    }

    #[test]
    fn a_cursor_reads_forward_within_its_bytes() {
        let mut cursor = Cursor::new(&[9, 3, b'a', b'b', b'c', 1, 2], 1);
        assert_eq!(cursor.count(1), Ok(3));
        assert_eq!(cursor.take(3), Ok(&b"abc"[..]));
        assert_eq!(cursor.array::<2>(), Ok([1, 2]));
        assert!(cursor.is_done());
        assert_eq!(cursor.take(1), Err(VarintError::Truncated));
        // Three entries of two bytes do not fit in the four bytes left.
        assert_eq!(
            Cursor::new(&[3, 0, 0, 0, 0], 0).count(2),
            Err(VarintError::TooMany { count: 3, left: 4 })
        );
    }
}
