//! The lowercase names of the wire enums: what the deprecated string fields
//! (`DegradedReason.stage`, `InfoResponse.state`) carry for older clients, and
//! what logs and the CLI print. One spelling, so the string and the enum a
//! server sends can never disagree.

use crate::v1::{LoadStatus, Stage};

impl Stage {
    /// `retrieval`, `ranking` (`unspecified` for the default value).
    pub fn name(self) -> &'static str {
        match self {
            Self::Retrieval => "retrieval",
            Self::Ranking => "ranking",
            Self::Unspecified => "unspecified",
        }
    }
}

impl LoadStatus {
    /// `loading`, `serving`, `failed` (`unspecified` for the default value).
    pub fn name(self) -> &'static str {
        match self {
            Self::Loading => "loading",
            Self::Serving => "serving",
            Self::Failed => "failed",
            Self::Unspecified => "unspecified",
        }
    }
}
