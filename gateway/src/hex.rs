//! Hexadecimal, as the gateway's key files hold secrets and hashes and the CLI
//! prints session tokens: lowercase out, either case in.

/// `bytes` as lowercase hex digits.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The bytes `text` spells, two hex digits each; `None` for an odd count or
/// anything but hex digits.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_bad_digits_are_refused() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(encode(&bytes), "0001abff");
        assert_eq!(decode("0001ABff").as_deref(), Some(&bytes[..]));
        for bad in ["0", "zz", "é1", "0x"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}
