//! LEB128 varints, the compact integers of the user history file
//! (`crate::user_history`) and of the gateway's session tokens: 7 bits a byte,
//! low bits first, the high bit set on every byte but the last.

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VarintError {
    /// The bytes end inside the number.
    #[error("the bytes end inside a number")]
    Truncated,
    /// The number does not fit in 64 bits.
    #[error("a number past u64::MAX")]
    Overflow,
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
}
