//! Keras weight names and layouts → ours.
//!
//! Keras `Dense` kernels are `(in, out)`; candle's `Linear` wants `(out, in)`, so
//! every kernel is transposed on the way in. The names are the stable ones the
//! TFRS exporter and the parity fixtures use (`cross_0/kernel`, `deep_1/bias`, …).

/// Our tensor name for a Keras-side name, and whether the tensor must be transposed.
pub fn from_keras(name: &str) -> Option<(String, bool)> {
    let (layer, variable) = name.split_once('/')?;
    let (kind, index) = match layer.rsplit_once('_') {
        Some((kind, index)) if index.bytes().all(|b| b.is_ascii_digit()) => (kind, Some(index)),
        _ => (layer, None),
    };
    let prefix = match (kind, index) {
        ("cross", Some(i)) => format!("cross.{i}"),
        ("deep", Some(j)) => format!("deep.{j}"),
        ("head", None) => "head".to_string(),
        _ => return None,
    };
    let (ours, transpose) = match variable {
        "kernel" => ("weight", true),
        "kernel_u" => ("u", true),
        "kernel_v" => ("v", true),
        "bias" => ("bias", false),
        _ => return None,
    };
    Some((format!("{prefix}.{ours}"), transpose))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_every_kind_of_weight() {
        assert_eq!(
            from_keras("cross_0/kernel"),
            Some(("cross.0.weight".into(), true))
        );
        assert_eq!(
            from_keras("cross_12/kernel_u"),
            Some(("cross.12.u".into(), true))
        );
        assert_eq!(
            from_keras("cross_1/kernel_v"),
            Some(("cross.1.v".into(), true))
        );
        assert_eq!(
            from_keras("cross_1/bias"),
            Some(("cross.1.bias".into(), false))
        );
        assert_eq!(
            from_keras("deep_1/kernel"),
            Some(("deep.1.weight".into(), true))
        );
        assert_eq!(from_keras("head/bias"), Some(("head.bias".into(), false)));
        assert_eq!(from_keras("embedding/embeddings"), None);
        assert_eq!(from_keras("cross_x/kernel"), None);
    }
}
